"""Model and tensor names: the contract shared by both serving profiles and every caller.

Also the wire limits every side must agree on (settings, the Geolocator service, the VLM models,
the client): one value each, imported, never retyped.
"""

# --- limits ------------------------------------------------------------------------------------------
MAX_NEW_TOKENS = 4096  # per VLM generation
MIN_IMAGE_SIDE = 28  # Qwen2-VL's smallest patch grid (2 x 14 px)
MAX_ASPECT_RATIO = 200  # Qwen2-VL's image processor refuses longer, thinner images
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")  # what the Geolocator decodes
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")  # files of those formats, as the client finds them
DETECTOR_MAX_SIDE = 1280  # photos are downscaled to this before `detector`: its TensorRT profiles' max
GEOLOCATOR_SERVICE = "navig.v1.Geolocator"  # the gRPC service, and its name in gRPC health checks

OCR = "ocr"  # one RGB image -> text lines
OCR_IMAGE = "image"
OCR_TEXTS = "texts"
OCR_BOXES = "boxes"
OCR_SCORES = "scores"

OCR_DET = "ocr_det"
OCR_DET_INPUT = "images"  # uint8 BGR [N, H, W, 3], H and W multiples of 32
OCR_DET_OUTPUT = "probability_map"

OCR_REC = "ocr_rec"
OCR_REC_INPUT = "crops"  # float32 [N, 3, 48, W], normalised to [-1, 1]
OCR_REC_OUTPUT = "probabilities"

OCR_MODELS = (OCR_DET, OCR_REC, OCR)

# GroundingDINO with NAVIG's prompts baked in: one call detects all of them.
DETECTOR = "detector"
DETECTOR_PROMPTS = ("road sign", "building sign", "house")
DETECTOR_IMAGES = "images"  # uint8 RGB [N, H, W, 3], any size: resized/normalised in the graph
DETECTOR_BOXES = "boxes"  # float32 [N, K, 4]: x0, y0, x1, y1 as fractions of width/height
DETECTOR_SCORES = "scores"  # float32 [N, K]: best prompt's score
DETECTOR_LABELS = "labels"  # int64 [N, K]: index into DETECTOR_PROMPTS
DETECTOR_PROMPT_SCORES = "prompt_scores"  # float32 [N, K, len(DETECTOR_PROMPTS)]
# The `reference` pipeline's detector: the same graph and outputs at GroundingDINO's own input size
# (navig_reference.detector_input_size), K = every query of every prompt, in (prompt, query) order
# (NAVIG keeps crops in query order, unsorted).
DETECTOR_REFERENCE = "detector_reference"

# CLIP, two encoders; embeddings are L2-normalised so inner product = cosine similarity.
CLIP_IMAGE = "clip_image"
CLIP_IMAGE_IMAGES = "images"  # uint8 RGB [N, H, W, 3], any size: CLIP preprocessing in the graph
CLIP_TEXT = "clip_text"
CLIP_TEXT_INPUT_IDS = "input_ids"  # int64 [N, L], from the checkpoint's tokenizer
CLIP_TEXT_ATTENTION_MASK = "attention_mask"  # int64 [N, L]
CLIP_EMBEDDINGS = "embeddings"  # float32 [N, D]

# Vision-language models: `reasoner` = base + REASONER LoRA merged; `vlm` = base (GUESSER, describer).
REASONER = "reasoner"
VLM = "vlm"
VLM_MODELS = (REASONER, VLM)
DETECTORS = (DETECTOR, DETECTOR_REFERENCE)
MODELS = (*OCR_MODELS, *DETECTORS, CLIP_IMAGE, CLIP_TEXT, *VLM_MODELS)  # every model a repository holds
# One generation per request; every tensor has Triton's batch dimension of 1 in front (dynamic
# batching groups concurrent requests into one batched generate).
VLM_PROMPT = "prompt"  # bytes [1, 1]: the user turn; the model applies the checkpoint's chat template
VLM_IMAGE = "image"  # uint8 RGB [1, H, W, 3], optional; any size (ragged across a batch)
VLM_MAX_TOKENS = "max_tokens"  # int32 [1, 1], optional: the model config's default otherwise
VLM_JSON_SCHEMA = "json_schema"  # bytes [1, 1], optional: constrain the answer to this JSON schema ("": none)
VLM_ADAPTER = "adapter"  # bytes [1, 1], optional: the LoRA adapter this row runs with ("": the base)
# Adapter mode (export `vlm.reasoner: adapter`): no `reasoner` model; the REASONER is this adapter on `vlm`.
REASONER_ADAPTER = "reasoner"
VLM_TEXT = "text"  # bytes [1, 1]: the whole answer (streaming: each response carries the new text)
VLM_TOKEN_IDS = "token_ids"  # int32 [1, -1]: generated token ids (streaming: the new ones)

"""Model and tensor names: the contract shared by both serving profiles and every caller."""

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

"""The public gRPC API (`navig.v1.Geolocator`): the proto and its generated Python stubs."""

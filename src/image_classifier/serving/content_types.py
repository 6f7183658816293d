"""Content types the model server reads and writes."""

JPEG = "image/jpeg"
PNG = "image/png"
X_IMAGE = "application/x-image"  # SageMaker's generic image type: any format Pillow reads
# what the SageMaker SDK's default Predictor (IdentitySerializer) sends raw bytes as: read as an image
OCTET_STREAM = "application/octet-stream"
JSON = "application/json"
NPY = "application/x-npy"
ANY = "*/*"

IMAGE_TYPES = (JPEG, PNG, X_IMAGE, OCTET_STREAM)
# what /invocations reads (Content-Type) and writes (Accept): the keys of serving/codec.py's decoder
# and encoder tables (tests/launch/test_registry.py holds them equal), for those that cannot import
# the codec, such as a model package's SupportedContentTypes and SupportedResponseMIMETypes
REQUEST_TYPES = (*IMAGE_TYPES, NPY, JSON)
RESPONSE_TYPES = (JSON, NPY, PNG)


def base_type(header: str | None) -> str:
    """The media type without parameters, lower-cased: `"Image/JPEG; q=1"` → `"image/jpeg"`."""
    return (header or "").split(";", 1)[0].strip().lower()

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


def base_type(header: str | None) -> str:
    """The media type without parameters, lower-cased: `"Image/JPEG; q=1"` → `"image/jpeg"`."""
    return (header or "").split(";", 1)[0].strip().lower()

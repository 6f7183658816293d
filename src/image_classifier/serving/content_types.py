"""Content types the model server reads and writes."""

JPEG = "image/jpeg"
PNG = "image/png"
X_IMAGE = "application/x-image"  # SageMaker's generic image type: any format Pillow reads
JSON = "application/json"
NPY = "application/x-npy"
ANY = "*/*"

IMAGE_TYPES = (JPEG, PNG, X_IMAGE)


def base_type(header: str | None) -> str:
    """The media type without parameters, lower-cased: `"Image/JPEG; q=1"` → `"image/jpeg"`."""
    return (header or "").split(";", 1)[0].strip().lower()

"""gridhub api."""

from gridhub import images as _images  # noqa: F401  # sets OpenCV's pixel cap before any module here loads cv2

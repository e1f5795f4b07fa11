"""Triton Python-backend model ``exdd_preprocess``: IMAGE uint8 (B, H, W, 3) of any size, or IMAGE_BYTES (B, 1)
encoded files -> MODEL_IMAGE uint8 (B, h, w, 3) at the model-input size, and IMAGE_HW int32 (B, 2), each
picture's own size.

Decoding and resizing are ``exdd_scoring.picture`` (the copy in this model's own version folder: no file of
another model is read), the functions the client, the bank build and calibration use. The model-input size
is this model's own config (the dims of output MODEL_IMAGE). A bad picture fails its own request with a
message naming the input and the problem; the other requests of the batch are answered.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


def scoring_package(version_dir, name):
    """Put this version's own exdd_scoring package first on the path."""
    if not os.path.isdir(os.path.join(version_dir, "exdd_scoring")):
        raise RuntimeError(
            f"{name}: needs exdd_scoring/ beside model.py in {version_dir} "
            "(rebuild the repository with exdd export repository)"
        )
    if version_dir not in sys.path:
        sys.path.insert(0, version_dir)


class TritonPythonModel:
    """Decode and resize to the model input."""

    def initialize(self, args):
        """Read the model-input size from this model's config; load the picture module (and so Pillow)."""
        config = json.loads(args["model_config"])
        self.name = args["model_name"]  # exdd_preprocess (exdd_scoring.model_names)
        scoring_package(os.path.join(args["model_repository"], str(args["model_version"])), self.name)
        try:
            from exdd_scoring import picture
        except ImportError as e:
            raise RuntimeError(f"{self.name}: needs Pillow in the serving Python (pip install pillow): {e}") from None
        self.picture = picture
        dims = next(o["dims"] for o in config["output"] if o["name"] == "MODEL_IMAGE")
        self.hw = (int(dims[0]), int(dims[1]))

    def _pictures(self, request):
        """(model-input arrays (B, h, w, 3), own sizes (B, 2)) of one request."""
        pic = self.picture
        arrays = pb_utils.get_input_tensor_by_name(request, "IMAGE")
        blobs = pb_utils.get_input_tensor_by_name(request, "IMAGE_BYTES")
        if arrays is not None and blobs is not None:
            raise pic.PictureError("give input IMAGE or input IMAGE_BYTES, not both")
        if arrays is not None:
            arr = arrays.as_numpy()
            if arr.ndim != 4 or arr.shape[0] < 1:
                raise pic.PictureError(f"input IMAGE of shape {tuple(arr.shape)}: expected (B>=1, H, W, 3)")
            pics = [pic.check_rgb(arr[j], f"input IMAGE[{j}]") for j in range(arr.shape[0])]
        elif blobs is not None:
            data = blobs.as_numpy()
            if data.ndim != 2 or data.shape[0] < 1 or data.shape[1] != 1:
                raise pic.PictureError(
                    f"input IMAGE_BYTES of shape {tuple(data.shape)}: expected (B>=1, 1), one encoded file per element"
                )
            pics = [pic.decode_rgb(data[j, 0], f"input IMAGE_BYTES[{j}]") for j in range(data.shape[0])]
        else:
            raise pic.PictureError("no input: send IMAGE (uint8 H x W x 3) or IMAGE_BYTES (encoded files)")
        out = np.stack([pic.resize_rgb(p, self.hw) for p in pics])
        return out, np.array([p.shape[:2] for p in pics], dtype=np.int32)

    def execute(self, requests):
        """Each request on its own: a bad picture fails only its request (HTTP 400 / INVALID_ARGUMENT)."""
        responses = []
        for request in requests:
            try:
                images, hw = self._pictures(request)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor("MODEL_IMAGE", images), pb_utils.Tensor("IMAGE_HW", hw)]
                    )
                )
            except self.picture.PictureError as e:
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"{self.name}: {e}", pb_utils.TritonError.INVALID_ARG)
                    )
                )
            except Exception as e:  # any other failure is this request's (internal) error
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {e}")))
        return responses

    def finalize(self):
        """Nothing to release."""
        self.picture = None

"""The one place an error code becomes an HTTP status and the `{"error": {"code", "message"}}` body clients read."""

from __future__ import annotations

from typing import Any

from protocol.errors import EdgeError

# Every code the controller's domain raises, with the status it answers with.
STATUS: dict[str, int] = {
    # requests the controller refuses as given
    "bad_name": 400,
    "bad_version": 400,
    "bad_since": 400,
    "bad_calibration": 400,
    "bad_sample": 400,
    "bad_task": 400,
    "bad_shape": 400,
    "invalid_model": 400,
    "not_onnx": 400,
    "cannot_convert": 400,
    "auto_needs_devices": 400,
    "which_model": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "cross_origin": 403,
    "bad_host": 400,
    "unsupported_media_type": 415,
    "invalid_label": 400,
    "too_many_labels": 400,
    "bad_rollout": 400,
    # things that are not there
    "not_found": 404,
    "unknown_model": 404,
    "not_deployed": 404,
    "unknown_version": 404,
    "unknown_device": 404,
    "unknown_variant": 404,
    "unknown_rollout": 404,
    # requests that contradict what is stored
    "conflict": 409,
    "version_exists": 409,
    "no_variants": 409,
    "no_previous": 409,
    "failed_before": 409,
    "rollout_conflict": 409,  # another active rollout holds a selected device for this model
    "rollout_state": 409,  # the action does not apply in the rollout's state (resume a completed one, ...)
    "no_devices": 409,  # the selector matches no device that can take the model
    "variant_not_built": 409,
    "variant_below_threshold": 409,
    "too_large": 413,
    "no_converters": 501,
    "device_offline": 503,
    "devices_busy": 503,
    "schema_error": 503,  # the database cannot be brought to this controller's schema (raised at start)
    "device_unreachable": 504,
}

# A device's own error codes: the few that are the caller's fault keep theirs, any other is a bad gateway.
DEVICE_STATUS: dict[str, int] = {"bad_input": 400, "not_found": 404, "nothing_captured": 409}


class DeviceError(EdgeError):
    """An error a device answered a request with (its code is the device's)."""

    code = "device_error"


def http_status(exc: EdgeError) -> int:
    """The HTTP status for an error: a device's by DEVICE_STATUS (else 502), the controller's by STATUS (else 500)."""
    if isinstance(exc, DeviceError):
        return DEVICE_STATUS.get(exc.code, 502)
    return STATUS.get(exc.code, 500)


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of every error answer."""
    return {"error": {"code": code, "message": message}}

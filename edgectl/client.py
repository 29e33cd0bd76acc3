"""HTTP client for the controller API; every failure becomes one ApiError line an operator can act on."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from protocol.errors import EdgeError

DEFAULT_CONTROLLER = "http://127.0.0.1:8400"
UPLOAD_BLOCK = 1 << 20


class ApiError(EdgeError, RuntimeError):
    """The controller refused a request or could not be reached: `status` is the HTTP status (None when it never
    answered), `code` the controller's error code when it gave one."""

    code = "api_error"

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message, code)
        self.status = status


class ControllerClient:
    def __init__(self, base_url: str = DEFAULT_CONTROLLER, timeout: float = 30.0, token: str | None = None) -> None:
        """`token` (default: $EDGECTL_TOKEN) is sent as `Authorization: Bearer TOKEN`."""
        self.base_url = base_url.rstrip("/")
        token = token if token is not None else os.environ.get("EDGECTL_TOKEN")
        headers = {"Authorization": f"Bearer {token.strip()}"} if token and token.strip() else {}
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The controller's answer; ApiError (one line, with the controller's code) for an error or none."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ApiError(
                f"cannot reach the controller at {self.base_url} (is edge-controller running? "
                "set --controller or EDGECTL_CONTROLLER)"
            ) from None
        except httpx.TimeoutException:
            raise ApiError(f"the controller at {self.base_url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ApiError(f"request to {self.base_url} failed: {exc}") from None
        if response.status_code >= 400:
            try:
                err = response.json().get("error") or response.json().get("detail")
            except ValueError:
                err = None
            if isinstance(err, dict):
                raise ApiError(err.get("message", str(err)), response.status_code, err.get("code"))
            raise ApiError(
                f"controller answered {response.status_code}: {err or response.text[:200]}", response.status_code
            )
        return response

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/api/v1/health")

    def upload_model(
        self, path: Path, name: str, version: str | None, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        def blocks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while block := f.read(UPLOAD_BLOCK):
                    if progress:
                        progress(len(block))
                    yield block

        params = {"filename": path.name} | ({"version": version} if version else {})
        return self._request(
            "POST",
            f"/api/v1/models/{name}",
            params=params,
            content=blocks(),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(path.stat().st_size)},
            timeout=httpx.Timeout(30.0, write=600.0, read=600.0),
        )

    def models(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/v1/models")

    def model(self, name: str, version: str | None = None) -> dict[str, Any]:
        return self._request("GET", f"/api/v1/models/{name}", params={"version": version} if version else None)

    def devices(self, select: list[str] | None = None) -> list[dict[str, Any]]:
        """Every device, or those every `KEY=VALUE` of `select` holds for."""
        return self._request("GET", "/api/v1/devices", params={"select": select} if select else None)

    def start_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/api/v1/rollouts", json=body)

    def rollouts(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/v1/rollouts")

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v1/rollouts/{rollout_id}")

    def rollout_events(self, rollout_id: str, after: int = 0) -> list[dict[str, Any]]:
        return self._request("GET", f"/api/v1/rollouts/{rollout_id}/events", params={"after": after})

    def rollout_action(self, rollout_id: str, action: str) -> dict[str, Any]:
        return self._request("POST", f"/api/v1/rollouts/{rollout_id}/{action}")

    def set_labels(self, device_id: str, labels: dict[str, str], remove: list[str]) -> dict[str, Any]:
        body = {"set": labels, "remove": remove}
        return self._request("POST", f"/api/v1/devices/{device_id}/labels", json=body)

    def device(self, device_id: str, timeout: float | None = None) -> dict[str, Any]:
        """One device; `timeout` (seconds) bounds this request instead of the client's default."""
        extra = {"timeout": timeout} if timeout is not None else {}
        return self._request("GET", f"/api/v1/devices/{device_id}", **extra)

    def deploy(
        self,
        model: str,
        version: str | None,
        devices: list[str],
        backend: str | None = None,
        variants: list[str] | None = None,
        force: bool = False,
        retry: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "version": version, "devices": devices, "backend": backend}
        body |= {"variants": variants, "force": force} if variants is not None or force else {}
        body |= {"retry": True} if retry else {}
        return self._request("POST", "/api/v1/deployments", json=body)

    def capture(self, device_id: str, model: str, timeout: float = 30.0) -> httpx.Response:
        """The device's kept request inputs for `model`: an .npz body, with X-Capture-Count/-Seen, X-Model-Version."""
        body = {"model": model, "timeout": timeout}
        return self._send("POST", f"/api/v1/devices/{device_id}/capture", json=body, timeout=timeout + 30)

    def undeploy(self, device_id: str, model: str) -> dict[str, Any]:
        return self._request("DELETE", f"/api/v1/devices/{device_id}/models/{model}")

    def rollback(self, device_id: str, model: str | None = None, to: str | None = None) -> dict[str, Any]:
        return self._request("POST", f"/api/v1/devices/{device_id}/rollback", json={"model": model, "to": to})

    def upload_calibration(self, name: str, version: str, path: Path) -> dict[str, Any]:
        return self._request(
            "POST",
            f"/api/v1/models/{name}/versions/{version}/calibration",
            content=path.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
            timeout=httpx.Timeout(30.0, write=600.0, read=600.0),
        )

    def upload_sample(self, name: str, version: str, path: Path, replace: bool = False) -> dict[str, Any]:
        """One representative input file for a version (.npz, .npy or a v2 JSON request body)."""
        return self._request(
            "POST",
            f"/api/v1/models/{name}/versions/{version}/samples",
            params={"filename": path.name, "replace": str(replace).lower()},
            content=path.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
            timeout=httpx.Timeout(30.0, write=600.0, read=600.0),
        )

    def set_input_shapes(self, name: str, version: str, shapes: list[str]) -> dict[str, Any]:
        return self._request("PUT", f"/api/v1/models/{name}/versions/{version}/input-shapes", json={"shapes": shapes})

    def set_task(self, name: str, version: str, task: str | None) -> dict[str, Any]:
        return self._request("PUT", f"/api/v1/models/{name}/versions/{version}/task", json={"task": task})

    def set_pinned(self, name: str, version: str, pinned: bool) -> dict[str, Any]:
        return self._request("PUT", f"/api/v1/models/{name}/versions/{version}/pin", json={"pinned": pinned})

    def optimize(self, name: str, version: str, variants: list[str], devices: list[str], **options: Any) -> dict:
        """Build variants on the controller (synchronous: the call lasts as long as the conversions)."""
        body = {"variants": variants, "devices": devices} | {k: v for k, v in options.items() if v is not None}
        return self._request(
            "POST",
            f"/api/v1/models/{name}/versions/{version}/optimize",
            json=body,
            timeout=httpx.Timeout(30.0, read=3600.0),
        )

    def telemetry(self, device_id: str, since: str) -> dict[str, Any]:
        """A device's telemetry samples since `since` (30s, 10m, 2h, 1d, or epoch seconds)."""
        return self._request("GET", f"/api/v1/devices/{device_id}/telemetry", params={"since": since})

    def fleet_telemetry(self) -> list[dict[str, Any]]:
        """Every device with its latest telemetry."""
        return self._request("GET", "/api/v1/telemetry")

    def infer(self, device_id: str, model: str, inputs: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        body = {"model": model, "inputs": inputs, "timeout": timeout}
        return self._request("POST", f"/api/v1/devices/{device_id}/infer", json=body, timeout=timeout + 5)

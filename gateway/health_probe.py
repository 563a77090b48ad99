"""`routegate health`: ask a gateway's grpc.health.v1 service whether it serves.

Exit status 0 when the service is SERVING, 1 otherwise (NOT_SERVING, unreachable, timeout), so
container health checks and scripts need no grpc tooling of their own.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout_s: float = 3.0) -> str:
    """The serving status name of `service` ("" = the whole gateway) at host:port."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

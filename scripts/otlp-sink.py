#!/usr/bin/env python3
"""A stand-in OTLP/gRPC collector for measuring the relay with traces on
(PERFORMANCE.md, "Traces"): it accepts TraceService/Export on 127.0.0.1,
answers an empty (valid) ExportTraceServiceResponse, and counts the exports
and their bytes, printed on SIGINT or SIGTERM. It decodes nothing, so it
costs the machine little. Needs `pip install grpcio`.

    python3 scripts/otlp-sink.py [PORT]   # default 4317
"""

import signal
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
counts = {"exports": 0, "bytes": 0}
lock = threading.Lock()


def export(request: bytes, context) -> bytes:
    with lock:
        counts["exports"] += 1
        counts["bytes"] += len(request)
    return b""


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 4317
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"otlp-sink listening on 127.0.0.1:{port}", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    # A timed wait: the main thread must wake for the signal handlers to run.
    while not stopped.wait(0.5):
        pass
    server.stop(1)
    print(f"otlp-sink: {counts['exports']} exports, {counts['bytes']} bytes", flush=True)


if __name__ == "__main__":
    main()

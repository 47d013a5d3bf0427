"""The gateway's gRPC front end: KServe v2 ``inference.GRPCInferenceService`` on Triton's wire (messages from
``tritonclient.grpc``'s generated modules), ``grpc.health.v1.Health`` and server reflection.

``server.GrpcServer`` (lifecycle, health, TLS) -> ``inference.InferenceService`` (the RPCs) ->
``tensors`` (wire tensors and parameters) / ``model_info`` (metadata and config answers).
"""

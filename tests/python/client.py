#!/usr/bin/env python3
"""A DataGuardian client generated from proto/ in another language (Python, grpcio-tools).

Generates the stubs into a temporary directory, then logs in, lists agents and runs a backup job now,
printing one JSON object with what it saw. Used by tests/it/python_client.rs; also a usage example.

    python3 tests/python/client.py --addr 127.0.0.1:7443 --ca ca.pem --user admin --password ... --job JOB_ID
"""
import argparse
import importlib
import json
import os
import sys
import tempfile

from grpc_tools import protoc
import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


def generate(out_dir):
    """Compiles every dataguardian .proto into Python modules under out_dir."""
    protos = []
    for root, _, files in os.walk(os.path.join(PROTO_ROOT, "dataguardian")):
        protos += [os.path.relpath(os.path.join(root, f), PROTO_ROOT) for f in files if f.endswith(".proto")]
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
    if protoc.main(args + sorted(protos)) != 0:
        raise SystemExit("protoc failed")
    sys.path.insert(0, out_dir)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--user", default="admin")
    p.add_argument("--password", required=True)
    p.add_argument("--job", required=True)
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as out:
        generate(out)
        auth = importlib.import_module("dataguardian.v1.auth_pb2")
        auth_grpc = importlib.import_module("dataguardian.v1.auth_pb2_grpc")
        agents = importlib.import_module("dataguardian.v1.agents_pb2")
        agents_grpc = importlib.import_module("dataguardian.v1.agents_pb2_grpc")
        jobs = importlib.import_module("dataguardian.v1.jobs_pb2")
        jobs_grpc = importlib.import_module("dataguardian.v1.jobs_pb2_grpc")
        executions = importlib.import_module("dataguardian.v1.executions_pb2")
        types = importlib.import_module("dataguardian.v1.types_pb2")

        with open(a.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        with grpc.secure_channel(a.addr, creds) as channel:
            login = auth_grpc.AuthServiceStub(channel).Login(auth.LoginRequest(username=a.user, password=a.password))
            md = [("authorization", f"Bearer {login.token}")]
            listed = agents_grpc.AgentServiceStub(channel).ListAgents(agents.ListAgentsRequest(), metadata=md)
            ex = jobs_grpc.BackupJobServiceStub(channel).RunNow(jobs.RunNowRequest(job_id=a.job), metadata=md)
            try:
                jobs_grpc.BackupJobServiceStub(channel).RunNow(jobs.RunNowRequest(job_id=a.job))
                unauthenticated = False
            except grpc.RpcError as e:
                unauthenticated = e.code() == grpc.StatusCode.UNAUTHENTICATED
        print(json.dumps({
            "token_prefix": login.token[:4],
            "agents": [{"id": ag.id, "status": agents.AgentStatus.Name(ag.status)} for ag in listed.agents],
            "execution_id": ex.id,
            "execution_status": types.ExecutionStatus.Name(ex.status),
            "execution_type": executions.Execution.DESCRIPTOR.full_name,
            "unauthenticated_without_token": unauthenticated,
        }))


if __name__ == "__main__":
    main()

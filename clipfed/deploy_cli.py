"""``clipfed deploy``: certificates, keys, connections, and SuperLink/SuperNode processes.

On real machines, run ``clipfed deploy superlink`` on the server host and ``clipfed deploy
supernode`` on each client host (they exec the Flower command with the right flags); ``clipfed
deploy local`` starts a whole cluster on this machine in the background and ``clipfed deploy
stop`` stops it by the PIDs it recorded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from clipfed.deploy import (
    SUPERLINK_PORT,
    Processes,
    TLSFiles,
    make_node_keys,
    make_tls,
    register_supernode,
    stop_pids,
    superlink_command,
    supernode_command,
    write_connection,
)
from clipfed.launch import flower_env, free_port, wait_healthy

LOCAL_CONNECTION = "clipfed-deploy"


def _flwr_home(args: argparse.Namespace) -> Path:
    return Path(args.flwr_home or os.environ.get("FLWR_HOME", Path.home() / ".flwr")).expanduser()


def _tls_in(folder: str | None) -> TLSFiles | None:
    if not folder:
        return None
    root = Path(folder)
    files = TLSFiles(root / "ca.crt", root / "server.pem", root / "server.key")
    missing = [str(p) for p in (files.ca_cert, files.server_cert, files.server_key) if not p.is_file()]
    if missing:
        raise SystemExit(f"clipfed deploy: --tls-dir {folder} lacks {', '.join(missing)}; "
                         "make them with `clipfed deploy certs`")
    return files


def cmd_certs(args: argparse.Namespace) -> int:
    files = make_tls(Path(args.out), args.host)
    print(f"CA: {files.ca_cert}\nSuperLink certificate: {files.server_cert} (SANs: {', '.join(args.host)})\n"
          f"SuperLink key: {files.server_key}\nGive {files.ca_cert.name} to every SuperNode and CLI host.")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    for name in args.name:
        private, public = make_node_keys(Path(args.out), name)
        print(f"{name}: private {private} (stays on the node), public {public} (register it)")
    return 0


def cmd_connection(args: argparse.Namespace) -> int:
    path = write_connection(_flwr_home(args), args.name, args.address,
                            Path(args.root_certificates).resolve() if args.root_certificates else None)
    print(f"[superlink.{args.name}] -> {args.address} written to {path}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    for key in args.public_key:
        node_id = register_supernode(_flwr_home(args), args.connection, Path(key))
        print(f"registered {key}: node id {node_id}")
    return 0


def _exec(command: list[str]) -> int:
    print("$ " + " ".join(command), flush=True)
    os.execvpe(command[0], command, flower_env(Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))))
    return 0  # not reached


def cmd_superlink(args: argparse.Namespace) -> int:
    return _exec(superlink_command(args.host, args.port, _tls_in(args.tls_dir), args.auth,
                                   args.database, args.isolation))


def cmd_supernode(args: argparse.Namespace) -> int:
    node = {"partition-id": args.partition_id, "num-partitions": args.num_partitions, "role": args.role,
            "num-threads": args.threads}
    if args.data_dir:
        node["data-dir"] = str(Path(args.data_dir).resolve())
    for pair in args.node_config or []:
        key, _, value = pair.partition("=")
        node[key] = value
    return _exec(supernode_command(args.superlink, node, args.port, args.root_certificates, args.key,
                                   args.isolation))


def cmd_local(args: argparse.Namespace) -> int:
    """A SuperLink and N SuperNodes on loopback, in the background; `clipfed deploy stop DIR`."""
    folder = Path(args.dir).resolve()
    if (folder / "logs" / "pids.json").exists():
        raise SystemExit(f"clipfed deploy local: {folder}/logs/pids.json exists (a cluster is running?); "
                         f"run `clipfed deploy stop {folder}` first")
    port = args.port or free_port()
    link = f"127.0.0.1:{port}"
    tls = make_tls(folder / "certs", ["127.0.0.1", "localhost"]) if args.tls or args.auth else None
    home = _flwr_home(args)
    write_connection(home, LOCAL_CONNECTION, link, tls.ca_cert if tls else None)
    procs = Processes(folder / "logs", flower_env(home))
    superlink = procs.start("superlink", superlink_command("127.0.0.1", port, tls, args.auth,
                                                           folder / "state.db"))
    wait_healthy(f"{'https' if tls else 'http'}://{link}/health", superlink,
                 verify=str(tls.ca_cert) if tls else True)
    malicious = set(args.malicious)
    for pid in range(args.nodes):
        key = None
        if args.auth:
            key, public = make_node_keys(folder / "keys", f"node{pid}")
            register_supernode(home, LOCAL_CONNECTION, public)
        node = {"partition-id": pid, "num-partitions": args.nodes, "num-threads": 1,
                "role": "malicious" if pid in malicious else "benign"}
        procs.start(f"node{pid}", supernode_command(link, node, free_port(),
                                                    tls.ca_cert if tls else None, key))
    print(f"SuperLink {link} ({'TLS' if tls else 'insecure'}{', node auth' if args.auth else ''}), "
          f"{args.nodes} SuperNodes (malicious: {sorted(malicious)}); logs in {folder / 'logs'}\n"
          f"  flwr run . {LOCAL_CONNECTION} --stream --run-config 'num-clients={args.nodes} "
          f"num-malicious={len(malicious)}'\n  clipfed deploy stop {folder}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    pid_file = Path(args.dir) / "logs" / "pids.json"
    if not pid_file.is_file():
        print(f"clipfed deploy stop: no {pid_file}", file=sys.stderr)
        return 2
    print("stopped: " + ", ".join(stop_pids(pid_file)))
    pid_file.unlink()
    return 0


def add_deploy_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    deploy = sub.add_parser("deploy", help="deployment: TLS, node keys, SuperLink/SuperNodes").add_subparsers(
        dest="deploy_command", required=True)

    def with_home(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--flwr-home", help="where the flwr CLI keeps config.toml (default $FLWR_HOME)")
        return p

    certs = deploy.add_parser("certs", help="a CA and a SuperLink certificate for the given hosts")
    certs.add_argument("--out", required=True)
    certs.add_argument("--host", action="append", required=True,
                       help="an IP or DNS name nodes dial (repeat); all must be listed")
    certs.set_defaults(func=cmd_certs)
    keys = deploy.add_parser("keys", help="an EC key pair per SuperNode (OpenSSH format)")
    keys.add_argument("--out", required=True)
    keys.add_argument("name", nargs="+")
    keys.set_defaults(func=cmd_keys)
    conn = with_home(deploy.add_parser("connection", help="write [superlink.<name>] into config.toml"))
    conn.add_argument("--name", required=True)
    conn.add_argument("--address", required=True, help="host:port of the SuperLink")
    conn.add_argument("--root-certificates", help="the CA (TLS); without it the connection is insecure")
    conn.set_defaults(func=cmd_connection)
    register = with_home(deploy.add_parser("register", help="register SuperNode public keys (node auth)"))
    register.add_argument("--connection", required=True)
    register.add_argument("public_key", nargs="+")
    register.set_defaults(func=cmd_register)

    link = deploy.add_parser("superlink", help="exec flower-superlink with clipfed's flags")
    link.add_argument("--host", default="0.0.0.0")
    link.add_argument("--port", type=int, default=SUPERLINK_PORT)
    link.add_argument("--tls-dir", help="folder from `clipfed deploy certs`; without it: insecure")
    link.add_argument("--auth", action="store_true", help="SuperNode authentication (needs --tls-dir)")
    link.add_argument("--database", default="state.db")
    link.add_argument("--isolation", choices=("subprocess", "process"), default="subprocess")
    link.set_defaults(func=cmd_superlink)
    node = deploy.add_parser("supernode", help="exec flower-supernode for one client")
    node.add_argument("--superlink", required=True, help="host:port")
    node.add_argument("--partition-id", type=int, required=True)
    node.add_argument("--num-partitions", type=int, required=True)
    node.add_argument("--role", choices=("benign", "malicious"), default="benign")
    node.add_argument("--data-dir", help="CIFAR-10 on this host (else CLIPFED_DATA_DIR)")
    node.add_argument("--threads", type=int, default=1, help="torch threads for local training")
    node.add_argument("--port", type=int, default=9094, help="this node's Runtime API port")
    node.add_argument("--root-certificates", help="the CA (TLS)")
    node.add_argument("--key", help="this node's private key (node auth)")
    node.add_argument("--isolation", choices=("subprocess", "process"), default="subprocess")
    node.add_argument("--node-config", nargs="*", help="extra k=v, e.g. the attack: attack=blended")
    node.set_defaults(func=cmd_supernode)

    local = with_home(deploy.add_parser("local", help="a SuperLink + SuperNodes on loopback, in the background"))
    local.add_argument("--dir", default="deploy-local", help="logs, PIDs, certificates, state")
    local.add_argument("--nodes", type=int, default=4)
    local.add_argument("--malicious", type=int, nargs="*", default=[3], help="partition ids that attack")
    local.add_argument("--port", type=int, default=0)
    local.add_argument("--tls", action="store_true")
    local.add_argument("--auth", action="store_true", help="SuperNode authentication (implies --tls)")
    local.set_defaults(func=cmd_local)
    stop = deploy.add_parser("stop", help="stop what `clipfed deploy local` started (by PID)")
    stop.add_argument("dir")
    stop.set_defaults(func=cmd_stop)

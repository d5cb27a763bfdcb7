"""``clipfed deploy``: certificates, keys, connections, and SuperLink/SuperNode processes.

On real machines, run ``clipfed deploy superlink`` on the server host and ``clipfed deploy
supernode`` on each client host (they exec the Flower command with the right flags); ``clipfed
deploy local`` starts a whole cluster on this machine in the background and ``clipfed deploy
stop`` stops it by the PIDs it recorded. Handlers import ``clipfed.deploy.cluster`` (cryptography) and
``clipfed.engines.launch`` (httpx) when they run, so building the parser stays light.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from clipfed.checks import node_config_problems
from clipfed.config import ConfigError, parse_config_text

if TYPE_CHECKING:
    from clipfed.deploy.cluster import TLSFiles

LOCAL_CONNECTION = "clipfed-deploy"


def _flwr_home(args: argparse.Namespace) -> Path:
    return Path(args.flwr_home or os.environ.get("FLWR_HOME", Path.home() / ".flwr")).expanduser()


def _tls_in(folder: str | None) -> TLSFiles | None:
    from clipfed.deploy.cluster import DeployError, TLSFiles

    if not folder:
        return None
    root = Path(folder)
    files = TLSFiles(root / "ca.crt", root / "server.pem", root / "server.key")
    missing = [str(p) for p in (files.ca_cert, files.server_cert, files.server_key) if not p.is_file()]
    if missing:
        raise DeployError(f"--tls-dir {folder} lacks {', '.join(missing)}; "
                          "make them with `clipfed deploy certs`")
    return files


def cmd_certs(args: argparse.Namespace) -> int:
    from clipfed.deploy.cluster import make_tls

    files = make_tls(Path(args.out_dir), args.host, force=args.force)
    print(f"CA: {files.ca_cert}\nSuperLink certificate: {files.server_cert} (SANs: {', '.join(args.host)})\n"
          f"SuperLink key: {files.server_key}\nGive {files.ca_cert.name} to every SuperNode and CLI host.")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from clipfed.deploy.cluster import make_node_keys

    for name in args.name:
        private, public = make_node_keys(Path(args.out_dir), name, force=args.force)
        print(f"{name}: private {private} (stays on the node), public {public} (register it)")
    return 0


def cmd_connection(args: argparse.Namespace) -> int:
    from clipfed.deploy.cluster import write_connection

    path = write_connection(_flwr_home(args), args.name, args.address,
                            Path(args.root_certificates) if args.root_certificates else None)
    print(f"[superlink.{args.name}] -> {args.address} written to {path}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from clipfed.deploy.cluster import register_supernode

    for key in args.public_key:
        node_id = register_supernode(_flwr_home(args), args.connection, Path(key))
        print(f"registered {key}: node id {node_id}")
    return 0


def _exec(command: list[str]) -> int:
    from clipfed.engines.launch import flower_env

    print("$ " + " ".join(command), flush=True)
    os.execvpe(command[0], command, flower_env(Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))))
    return 0  # not reached


def cmd_superlink(args: argparse.Namespace) -> int:
    from clipfed.deploy.cluster import SUPERLINK_PORT, DeployError, superlink_command

    if args.auth and not args.tls_dir:
        raise DeployError("--auth (SuperNode authentication) needs TLS; allowed: --auth with --tls-dir DIR "
                          "(made by `clipfed deploy certs`), or no --auth")
    port = SUPERLINK_PORT if args.port is None else args.port
    return _exec(superlink_command(args.host, port, _tls_in(args.tls_dir), args.auth,
                                   args.database, args.isolation))


def cmd_supernode(args: argparse.Namespace) -> int:
    from clipfed.deploy.cluster import DeployError, check_ca_file, supernode_command

    node = {"partition-id": args.partition_id, "num-partitions": args.num_partitions, "role": args.role,
            "num-threads": args.threads}
    if args.malicious_rank is not None:
        if args.malicious_rank < 0:
            raise DeployError(f"--malicious-rank {args.malicious_rank}: allowed: an integer >= 0")
        node["malicious-rank"] = args.malicious_rank
    if args.data_dir:
        node["data-dir"] = str(Path(args.data_dir).resolve())
    try:  # TOML values, as flower-supernode parses them; other text is refused, not passed on
        node.update(parse_config_text(args.node_config, "node config"))
    except ConfigError as err:
        raise DeployError(f"--node-config: {err}") from None
    if problems := node_config_problems(node):
        raise DeployError("--node-config: " + "; ".join(problems))
    ca = check_ca_file(args.root_certificates) if args.root_certificates else None
    if args.key and ca is None:  # flower-supernode would run --insecure and the SuperLink refuse the node
        raise DeployError(f"--key {args.key}: node authentication needs TLS; give --root-certificates (the "
                          "SuperLink's CA, from `clipfed deploy certs`) too")
    if args.key and not Path(args.key).is_file():
        raise DeployError(f"--key {args.key}: no such file (this node's private key from "
                          "`clipfed deploy keys`)")
    return _exec(supernode_command(args.superlink, node, args.port, ca, args.key, args.isolation))


def local_node_config(pid: int, nodes: int, malicious: list[int]) -> dict[str, int | str]:
    """Node config of ``deploy local``'s node ``pid``; attackers get distinct ranks (their index in
    ``malicious``, sorted), so each stamps its own DBA part."""
    node: dict[str, int | str] = {"partition-id": pid, "num-partitions": nodes, "num-threads": 1,
                                  "role": "malicious" if pid in malicious else "benign"}
    if pid in malicious:
        node["malicious-rank"] = malicious.index(pid)
    return node


def cmd_local(args: argparse.Namespace) -> int:
    """A SuperLink and N SuperNodes on loopback, in the background; `clipfed deploy stop DIR`."""
    from clipfed.deploy.cluster import (
        DeployError,
        Processes,
        make_node_keys,
        make_tls,
        register_supernode,
        superlink_command,
        supernode_command,
        write_connection,
    )
    from clipfed.engines.launch import flower_env, free_port, wait_healthy

    folder = Path(args.dir).resolve()
    if args.nodes < 1:
        raise DeployError(f"--nodes {args.nodes}: allowed: 1 or more")
    if outside := sorted({pid for pid in args.malicious if not 0 <= pid < args.nodes}):
        raise DeployError(f"--malicious {' '.join(map(str, outside))}: not a partition id of --nodes {args.nodes}; "
                          f"allowed: ids 0..{args.nodes - 1} (or --malicious alone for no attacker)")
    if (folder / "logs" / "pids.json").exists():
        raise DeployError(f"deploy local: {folder}/logs/pids.json exists (a cluster is running?); "
                          f"run `clipfed deploy stop {folder}` first")
    port = args.port or free_port()
    link = f"127.0.0.1:{port}"
    # This throwaway cluster's own CA and keys under --dir: made afresh on every start.
    tls = make_tls(folder / "certs", ["127.0.0.1", "localhost"], force=True) if args.tls or args.auth else None
    home = _flwr_home(args)
    write_connection(home, LOCAL_CONNECTION, link, tls.ca_cert if tls else None)
    procs = Processes(folder / "logs", flower_env(home))
    superlink = procs.start("superlink", superlink_command("127.0.0.1", port, tls, args.auth,
                                                           folder / "state.db"))
    wait_healthy(f"{'https' if tls else 'http'}://{link}/health", superlink,
                 verify=str(tls.ca_cert) if tls else True)
    malicious = sorted(set(args.malicious))
    for pid in range(args.nodes):
        key = None
        if args.auth:
            key, public = make_node_keys(folder / "keys", f"node{pid}", force=True)
            register_supernode(home, LOCAL_CONNECTION, public)
        node = local_node_config(pid, args.nodes, malicious)
        procs.start(f"node{pid}", supernode_command(link, node, free_port(),
                                                    tls.ca_cert if tls else None, key))
    print(f"SuperLink {link} ({'TLS' if tls else 'insecure'}{', node auth' if args.auth else ''}), "
          f"{args.nodes} SuperNodes (malicious: {malicious}); logs in {folder / 'logs'}\n"
          f"  flwr run . {LOCAL_CONNECTION} --stream --run-config 'num-clients={args.nodes} "
          f"num-malicious={len(malicious)}'\n  clipfed deploy stop {folder}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from clipfed.deploy.cluster import DeployError, stop_pids

    pid_file = Path(args.dir) / "logs" / "pids.json"
    if not pid_file.is_file():
        raise DeployError(f"deploy stop {args.dir}: no {pid_file}; allowed: the --dir of a running "
                          "`clipfed deploy local`")
    print("stopped: " + ", ".join(stop_pids(pid_file)))
    pid_file.unlink()
    return 0


def add_deploy_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    deploy = sub.add_parser("deploy", help="deployment: TLS, node keys, SuperLink/SuperNodes").add_subparsers(
        dest="deploy_command", required=True)

    def with_home(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--flwr-home", help="where the flwr CLI keeps config.toml (default $FLWR_HOME)")
        return p

    certs = deploy.add_parser("certs", help="a CA and a SuperLink certificate for the given hosts")
    certs.add_argument("--out-dir", required=True, help="folder for the CA and SuperLink certificates")
    certs.add_argument("--host", action="append", required=True,
                       help="an IP or DNS name nodes dial (repeat); all must be listed")
    certs.add_argument("--force", action="store_true",
                       help="replace an existing CA and certificate (every copied ca.crt stops working)")
    certs.set_defaults(func=cmd_certs)
    keys = deploy.add_parser("keys", help="an EC key pair per SuperNode (OpenSSH format)")
    keys.add_argument("--out-dir", required=True, help="folder for the node key pairs")
    keys.add_argument("name", nargs="+")
    keys.add_argument("--force", action="store_true",
                      help="replace existing key pairs (registered public keys stop working)")
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
    link.add_argument("--port", type=int, default=None)  # None: clipfed.deploy.cluster.SUPERLINK_PORT
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
    node.add_argument("--malicious-rank", type=int,
                      help="this attacker's rank: which DBA part it stamps (default: its partition id)")
    node.add_argument("--data-dir",
                      help="CIFAR-10 on this host (else the run config's data-dir, else CLIPFED_DATA_DIR)")
    node.add_argument("--threads", type=int, default=1, help="torch threads for local training")
    node.add_argument("--port", type=int, default=9094, help="this node's Runtime API port")
    node.add_argument("--root-certificates", help="the CA (TLS)")
    node.add_argument("--key", help="this node's private key (node auth; needs --root-certificates)")
    node.add_argument("--isolation", choices=("subprocess", "process"), default="subprocess")
    node.add_argument("--node-config", nargs="*", help="extra k=v (TOML values), e.g. the attack: \"attack='blended'\"")
    node.set_defaults(func=cmd_supernode)

    local = with_home(deploy.add_parser("local", help="a SuperLink + SuperNodes on loopback, in the background"))
    local.add_argument("--dir", default="deploy-local",
                       help="logs, PIDs, state, and certificates and keys made afresh on each start")
    local.add_argument("--nodes", type=int, default=4)
    local.add_argument("--malicious", type=int, nargs="*", default=[3], help="partition ids that attack")
    local.add_argument("--port", type=int, default=0)
    local.add_argument("--tls", action="store_true")
    local.add_argument("--auth", action="store_true", help="SuperNode authentication (implies --tls)")
    local.set_defaults(func=cmd_local)
    stop = deploy.add_parser("stop", help="stop what `clipfed deploy local` started (by PID)")
    stop.add_argument("dir")
    stop.set_defaults(func=cmd_stop)

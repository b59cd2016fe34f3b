"""CURVE keys for pipelines reachable from other hosts.

Context code is Python, so whoever can talk to a pipeline's control socket
can run code in it.  By default nothing is reachable from other hosts; a
pipeline that binds to a network interface must use CURVE: every socket a
stage binds becomes a CURVE server that only accepts peers holding the
client key, and every connecting socket (stages, remote workers, clients)
proves it holds that key.

A key directory holds two key pairs made by ``metropc-keys DIR``:
``server.key`` / ``server.key_secret`` and ``client.key`` /
``client.key_secret``; secret files are mode 0600 and the directory 0700.
Copy the directory to the hosts of remote workers and clients.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from dataclasses import dataclass

import zmq
import zmq.auth

__all__ = ["generate_keys", "Keys", "Authenticator", "main"]


def generate_keys(directory):
    """Create the server and client key pairs in `directory` (made 0700)."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq has no CURVE support")
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o700)
    for name in ("server", "client"):
        public, secret = zmq.auth.create_certificates(directory, name)
        os.chmod(secret, 0o600)
        os.chmod(public, 0o644)
    return Keys.load(directory)


@dataclass(frozen=True)
class Keys:
    """The key pairs of one pipeline, as loaded from a key directory."""

    directory: str
    server_public: bytes
    server_secret: bytes | None
    client_public: bytes
    client_secret: bytes

    @classmethod
    def load(cls, directory):
        """Load a key directory; refuses secret files others can read."""
        directory = os.fspath(directory)
        files = {}
        for name in ("server", "client"):
            secret_file = os.path.join(directory, f"{name}.key_secret")
            public_file = os.path.join(directory, f"{name}.key")
            if os.path.exists(secret_file):
                mode = stat.S_IMODE(os.stat(secret_file).st_mode)
                if mode & 0o077:
                    raise PermissionError(
                        f"{secret_file} is readable by others (mode {mode:o}); "
                        f"chmod 600 it")
                files[name] = zmq.auth.load_certificate(secret_file)
            elif os.path.exists(public_file):
                files[name] = zmq.auth.load_certificate(public_file)
            else:
                raise FileNotFoundError(f"no {name} key in {directory}; make keys "
                                        f"with: metropc-keys {directory}")
        if files["client"][1] is None:
            raise FileNotFoundError(f"{directory} lacks client.key_secret")
        return cls(directory, files["server"][0], files["server"][1],
                   files["client"][0], files["client"][1])

    def server(self, sock):
        """Make `sock` (which binds) a CURVE server."""
        if self.server_secret is None:
            raise PermissionError(f"{self.directory} lacks server.key_secret, needed "
                                  "to bind a pipeline socket")
        sock.curve_publickey = self.server_public
        sock.curve_secretkey = self.server_secret
        sock.curve_server = True

    def client(self, sock):
        """Make `sock` (which connects) a CURVE client of the pipeline."""
        sock.curve_publickey = self.client_public
        sock.curve_secretkey = self.client_secret
        sock.curve_serverkey = self.server_public


class Authenticator:
    """Accepts CURVE peers whose public key is the pipeline's client key.

    One per process that binds secured sockets, on that process's ZeroMQ
    context (ZeroMQ asks it about every new connection).
    """

    def __init__(self, zctx, keys):
        from zmq.auth.thread import ThreadAuthenticator

        self._auth = ThreadAuthenticator(zctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=keys.directory)

    def stop(self):
        self._auth.stop()


def secure(zctx, keys):
    """(server, client) callables for sockets of one process; no-ops without keys."""
    if keys is None:
        return (lambda sock: None), (lambda sock: None), None
    keys = keys if isinstance(keys, Keys) else Keys.load(keys)
    return keys.server, keys.client, Authenticator(zctx, keys)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="metropc-keys",
        description="Make the CURVE keys that protect a pipeline reachable from other "
                    "hosts (server and client key pairs, secret files mode 0600).")
    parser.add_argument("directory", help="where to put the keys (created, mode 0700)")
    parser.add_argument("--force", action="store_true", help="replace existing keys")
    args = parser.parse_args(argv)
    existing = [f for f in ("server.key_secret", "client.key_secret")
                if os.path.exists(os.path.join(args.directory, f))]
    if existing and not args.force:
        print(f"metropc-keys: {args.directory} already has keys ({', '.join(existing)}); "
              "pass --force to replace them", file=sys.stderr)
        return 1
    keys = generate_keys(args.directory)
    print(f"metropc-keys: keys written to {keys.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

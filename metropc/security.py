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

``metropc-keys`` exits with 0 once the keys are written; 2 (one line naming
the directory) when the directory can never hold keys: empty, an existing
file, or a path through a file (``/dev/null/x``); 1 when the system refused
to create or write it (permissions, a read-only or special file system such
as ``/proc``), when it has keys already (``--force`` replaces them), or when
libzmq has no CURVE.
"""

from __future__ import annotations

import argparse
import errno
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
        if not os.path.isdir(directory):
            what = "is not a directory" if os.path.exists(directory) else "does not exist"
            raise FileNotFoundError(f"the key directory {directory!r} {what}; make keys "
                                    f"with: metropc-keys DIR")
        if not os.access(directory, os.X_OK):
            # Its files cannot be reached (listing them is not needed): else
            # every key file looks missing, and the advice to make keys there
            # would fail the same way.
            raise PermissionError(f"cannot read the key directory {directory!r}: "
                                  f"{os.strerror(errno.EACCES)}")
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
                files[name] = _load_certificate(secret_file)
            elif os.path.exists(public_file):
                files[name] = _load_certificate(public_file)
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


def _load_certificate(path):
    """``zmq.auth.load_certificate(path)``, with an unreadable file said in
    one line (PermissionError naming it) rather than as open()'s text."""
    try:
        return zmq.auth.load_certificate(path)
    except PermissionError as e:
        raise PermissionError(f"cannot read the key file {path!r}: "
                              f"{e.strerror or e}") from None


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


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, as metropc-run's: the user sees what is wrong at once.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _refuse(directory):
    """Why `directory` can never be a key directory (exit 2), or None."""
    if not directory.strip():
        return "the key directory is empty: give the path of a directory"
    if os.path.exists(directory) and not os.path.isdir(directory):
        return f"{directory!r} exists and is not a directory"
    return None


def main(argv=None):
    """``metropc-keys DIR``.  Exit codes: 0 keys written; 2 DIR can never be a
    key directory (empty, an existing file, or a path through a file); 1 the
    system refused to create or write it (permissions, a read-only or special
    file system, a full disk), DIR already has keys (without ``--force``), or
    this libzmq has no CURVE."""
    prog = "metropc-keys"
    parser = _Parser(
        prog=prog,
        description="Make the CURVE keys that protect a pipeline reachable from other "
                    "hosts (server and client key pairs, secret files mode 0600).",
        epilog="Exit codes: 0 keys written; 2 DIRECTORY can never hold keys (empty, "
               "an existing file, a path through a file); 1 it could not be created or "
               "written (permissions, a read-only or special file system), it has keys "
               "already (see --force), or libzmq has no CURVE.")
    parser.add_argument("directory", help="where to put the keys (created, mode 0700)")
    parser.add_argument("--force", action="store_true", help="replace existing keys")
    args = parser.parse_args(argv)
    directory = args.directory
    reason = _refuse(directory)
    if reason is not None:
        print(f"{prog}: error: {reason}", file=sys.stderr)
        return 2
    existing = [f for f in ("server.key_secret", "client.key_secret")
                if os.path.exists(os.path.join(directory, f))]
    if existing and not args.force:
        print(f"{prog}: {directory} already has keys ({', '.join(existing)}); "
              "pass --force to replace them", file=sys.stderr)
        return 1
    try:
        keys = generate_keys(directory)
    except NotADirectoryError as e:  # a parent is a file: /dev/null/x
        print(f"{prog}: error: cannot create the key directory {directory!r}: "
              f"{e.strerror or e} (a part of the path is a file)", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prog}: error: cannot create the key directory {directory!r}: "
              f"{e.strerror or e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    print(f"{prog}: keys written to {keys.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

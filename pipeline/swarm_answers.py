"""The swarm client's answer store: the host folder of ``DKT_CLIENT_DB`` that the client service bind-mounts.

The client container writes the very file the data update exports (update_data_dag runs on this host), so
answers given in the swarm reach the next data version. ``check_client_store`` refuses, before anything is
built, a folder the container could not use or would expose more than the database from.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

# What may sit beside the database in its folder: SQLite's own files (WAL, shared memory, rollback journal)
# and a file system's lost+found. Anything else would be exposed to the client container by the bind mount.
_DB_SIDE_FILES = ("", "-wal", "-shm", "-journal")


@dataclass(frozen=True)
class ClientStore:
    """The host folder the client service bind-mounts, and the container user that can write in it."""

    db: Path
    uid: int
    gid: int

    @property
    def folder(self) -> Path:
        return self.db.parent

    def compose_env(self) -> dict[str, str]:
        return {
            "DKT_CLIENT_DATA_DIR": str(self.folder),
            "DKT_CLIENT_DB_NAME": self.db.name,
            "DKT_CLIENT_USER": f"{self.uid}:{self.gid}",
        }


def _writable_by(st: os.stat_result, uid: int, gid: int) -> bool:
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def check_client_store(db: Path) -> ClientStore:
    """Refuse (ValueError naming the path and the fix) an answer store the client container could not use.

    The client container runs as the uid:gid owning the folder, so the answers it writes belong to the
    same account as the files the exporter on this host opens (a WAL reader writes the -shm file too).
    """
    var = "DKT_CLIENT_DB"
    folder = db.parent
    if not folder.exists():
        raise ValueError(
            f"{var}={db}: folder {folder} does not exist; create it (mkdir -p {folder}) as the account that runs "
            "update_data_dag: the swarm client stores answers there and the data update exports them from there"
        )
    if not folder.is_dir():
        raise ValueError(f"{var}={db}: {folder} is not a folder")
    if db.exists() and not db.is_file():
        raise ValueError(f"{var}={db}: exists and is not a file")
    others = sorted(
        p.name
        for p in folder.iterdir()
        if p.name != "lost+found" and p.name not in {db.name + s for s in _DB_SIDE_FILES}
    )
    if others:
        raise ValueError(
            f"{var}={db}: folder {folder} holds more than the client database ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}); the client container mounts the whole folder, so give the "
            "database a folder of its own (e.g. DKT_CLIENT_DB=var/client/client.db) and set the same DKT_CLIENT_DB "
            "for update_data_dag"
        )
    st = folder.stat()
    uid, gid = st.st_uid, st.st_gid
    if not (st.st_mode & stat.S_IWUSR and st.st_mode & stat.S_IXUSR) or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(
            f"{var}={db}: folder {folder} is not writable (mode {stat.filemode(st.st_mode)}, owner {uid}:{gid}); "
            f"the client container runs as its owner and creates the database and its WAL files there: "
            f"chmod u+rwx {folder}"
        )
    if os.geteuid() != uid:
        # The exporter (update_data_dag) runs as this account too; a WAL file or shared-memory index it creates
        # would belong to it and lock out the container (or the other way round).
        raise ValueError(
            f"{var}={db}: folder {folder} belongs to uid {uid}, but this deploy (and the data update's exporter, "
            f"which runs as the same account) runs as uid {os.geteuid()}; SQLite's WAL files must be writable by both "
            f"the client container and the exporter: chown {os.geteuid()}:{os.getegid()} {folder}"
        )
    for suffix in _DB_SIDE_FILES:
        f = folder / (db.name + suffix)
        if f.exists() and (not _writable_by(f.stat(), uid, gid) or not os.access(f, os.R_OK | os.W_OK)):
            fst = f.stat()
            raise ValueError(
                f"{var}={db}: {f} is not writable by the folder's owner {uid}:{gid}, whom the client container runs "
                f"as (file owner {fst.st_uid}:{fst.st_gid}, mode {stat.filemode(fst.st_mode)}): chown {uid}:{gid} {f}"
            )
    return ClientStore(db=db, uid=uid, gid=gid)

"""A protocol-faithful DVID test double, written from reference/upstreams.md §1.

No real DVID can be built or reached here, so this is what the `dvid` upstream is tested
against. It implements the behaviours of §1.7: the server/repo/node routes and their JSON shapes
(Go field names, inclusive MaxPoint, ``null`` extents for an empty instance, MinIndex/MaxIndex by
floor division), UUID resolution by unique prefix and ``prefix:branch`` / ``:branch`` with DVID's
error texts, versions as a DAG with per-node data, ``/raw`` and ``/isotropic`` 3-D reads at any
offset (zero fill for blocks never written; imageblk ignores ``compression``; labels honour
``lz4`` as a bare LZ4 block and ``gzip``; ``scale`` for labelmap/labelarray), imageblk
``/blocks`` (missing blocks filled with Background) and labelmap ``/blocks`` (framed, missing
blocks omitted), ``throttle`` → 503, the single-block labelmap quirk, and 400 ``text/plain``
errors ending in `` (<path>).``. Its honesty is checked by reading it with intern's DVIDRemote.

Tests set it up through Python (``add_repo``, ``add_instance``, ``write``, ``branch``, ``lock``),
then serve ``double.app`` on loopback. Writes over HTTP: ``POST …/raw/0_1_2/…`` of block-aligned
little-endian voxels into an unlocked node (a locked one refuses: 400 text, as every error).
"""

from __future__ import annotations

import gzip
import io
import struct
import uuid as uuid_module
from dataclasses import dataclass, field
from typing import Any

import lz4.block
import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

IMAGE_TYPES = {"uint8blk": "uint8", "uint16blk": "uint16"}
LABEL_TYPES = {"labelmap": "uint64", "labelarray": "uint64", "labelblk": "uint64"}
MULTISCALE_LABELS = ("labelmap", "labelarray")


class DvidError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Node:
    uuid: str
    version_id: int
    branch: str = ""  # DVID's default ("master") branch is the empty name
    parents: list[int] = field(default_factory=list)
    children: list[int] = field(default_factory=list)
    locked: bool = False


@dataclass
class Instance:
    name: str
    type_name: str
    block_size: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    voxel_units: str
    data_uuid: str
    max_downres: int = 0
    # per node uuid: per scale: a Z,Y,X array from the origin, and the written voxel extents
    data: dict[str, list[np.ndarray]] = field(default_factory=dict)
    extents: dict[str, tuple[list[int], list[int]] | None] = field(default_factory=dict)
    next_label: int = 1  # a labelmap's next label to reserve (POST nextlabel)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(IMAGE_TYPES.get(self.type_name) or LABEL_TYPES[self.type_name])

    @property
    def is_label(self) -> bool:
        return self.type_name in LABEL_TYPES


@dataclass
class Repo:
    root: str
    alias: str
    nodes: dict[str, Node] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)


class DvidDouble:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self._next_version = 1
        self.throttle_busy = False   # when True, throttled requests get 503
        self.requests: list[str] = []
        self.posts: list[str] = []  # the paths of the writes it took
        self.app = Starlette(routes=[Route("/api/{path:path}", self._dispatch,
                                           methods=["GET", "HEAD", "POST"])])

    # --- set-up API (Python) -----------------------------------------------------------------

    def add_repo(self, alias: str = "repo") -> str:
        root = uuid_module.uuid4().hex
        repo = Repo(root=root, alias=alias)
        repo.nodes[root] = Node(root, self._version())
        self.repos[root] = repo
        return root

    def _version(self) -> int:
        self._next_version += 1
        return self._next_version - 1

    def add_instance(self, node: str, name: str, type_name: str,
                     block_size: tuple[int, int, int] | None = None,
                     voxel_size: tuple[float, float, float] = (8.0, 8.0, 8.0),
                     max_downres: int = 0) -> None:
        repo = self._repo_of(node)
        default = 64 if type_name in MULTISCALE_LABELS else 32
        repo.instances[name] = Instance(
            name=name, type_name=type_name, block_size=block_size or (default,) * 3,
            voxel_size=voxel_size, voxel_units="nanometers", data_uuid=uuid_module.uuid4().hex,
            max_downres=max_downres,
        )

    def write(self, node: str, name: str, offset_xyz: tuple[int, int, int], array: np.ndarray,
              scale: int = 0) -> None:
        """Write Z,Y,X voxels at an offset of one node (as a POST to /raw would)."""
        repo = self._repo_of(node)
        instance = repo.instances[name]
        if repo.nodes[node].locked:
            raise DvidError("node is locked")
        scales = instance.data.setdefault(node, [np.zeros((0, 0, 0), instance.dtype)] *
                                          (instance.max_downres + 1))
        x, y, z = offset_xyz
        sz, sy, sx = array.shape
        current = scales[scale]
        need = (max(current.shape[0], z + sz), max(current.shape[1], y + sy),
                max(current.shape[2], x + sx))
        if need != current.shape:
            grown = np.zeros(need, instance.dtype)
            grown[: current.shape[0], : current.shape[1], : current.shape[2]] = current
            current = grown
        current[z:z + sz, y:y + sy, x:x + sx] = array
        scales[scale] = current
        if scale == 0:
            lo, hi = [x, y, z], [x + sx - 1, y + sy - 1, z + sz - 1]
            held = instance.extents.get(node)
            if held is not None:
                lo = [min(a, b) for a, b in zip(lo, held[0], strict=True)]
                hi = [max(a, b) for a, b in zip(hi, held[1], strict=True)]
            instance.extents[node] = (lo, hi)

    def branch(self, parent: str, branch: str = "") -> str:
        """A child node of ``parent`` (on ``branch``) holding a copy of its data."""
        repo = self._repo_of(parent)
        child = uuid_module.uuid4().hex
        node = Node(child, self._version(), branch=branch,
                    parents=[repo.nodes[parent].version_id])
        repo.nodes[parent].children.append(node.version_id)
        repo.nodes[child] = node
        for instance in repo.instances.values():
            if parent in instance.data:
                instance.data[child] = [a.copy() for a in instance.data[parent]]
                instance.extents[child] = instance.extents.get(parent)
        return child

    def lock(self, node: str) -> None:
        self._repo_of(node).nodes[node].locked = True

    def _repo_of(self, node: str) -> Repo:
        for repo in self.repos.values():
            if node in repo.nodes:
                return repo
        raise KeyError(node)

    # --- UUID resolution (DVID datastore.MatchingUUID) -----------------------------------------

    def resolve(self, spec: str) -> tuple[Repo, str]:
        if spec.count(":") > 1:
            raise DvidError(f"only one colon allowed in UUID specification: {spec!r}")
        prefix, colon, branch = spec.partition(":")
        matches = [(repo, u) for repo in self.repos.values() for u in repo.nodes
                   if u.startswith(prefix)]
        if colon:
            repos = {id(r): r for r, _ in matches}.values() if prefix else self.repos.values()
            for repo in repos:
                leaf = self._leaf(repo, "" if branch == "master" else branch)
                if leaf is not None:
                    return repo, leaf
            raise DvidError(f"could not find UUID with partial match to {spec}")
        if not matches:
            raise DvidError(f"could not find UUID with partial match to {prefix}")
        if len(matches) > 1:
            raise DvidError(f"more than one UUID matches {prefix}")
        return matches[0]

    @staticmethod
    def _leaf(repo: Repo, branch: str) -> str | None:
        nodes = [n for n in repo.nodes.values() if n.branch == branch]
        if not nodes and branch == "":
            return None
        by_version = {n.version_id: n for n in repo.nodes.values()}
        for node in nodes:
            if not any(by_version[c].branch == branch for c in node.children):
                return node.uuid
        return None

    def _branch_versions(self, repo: Repo, branch: str) -> list[str]:
        leaf = self._leaf(repo, "" if branch == "master" else branch)
        if leaf is None:
            raise DvidError(f"branch {branch!r} not found")
        by_version = {n.version_id: n for n in repo.nodes.values()}
        out, node = [leaf], repo.nodes[leaf]
        while node.parents:
            node = by_version[node.parents[0]]
            out.append(node.uuid)
        return out

    # --- HTTP ----------------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
        path = request.url.path
        self.requests.append(path + ("?" + request.url.query if request.url.query else ""))
        parts = path.split("/")[2:]  # after "/api/"
        try:
            if request.method == "POST":
                return self._post(request, parts, await request.body())
            return self._route(request, parts)
        except DvidError as exc:
            # server.BadRequest: text/plain "<message> (<url path>)."
            return Response(f"{exc} ({path}).", status_code=exc.status,
                            media_type="text/plain")

    def _route(self, request: Request, parts: list[str]) -> Response:
        match parts:
            case ["heartbeat"]:
                return Response(b"")
            case ["server", "info"]:
                return JSONResponse({"Cores": "2", "Maximum Cores": "2", "DVID Version": "double",
                                     "Datastore Version": "0.10.0", "Storage backend": "memory",
                                     "Server uptime": "1s", "Host": "127.0.0.1", "Note": ""})
            case ["repos", "info"]:
                return JSONResponse({r.root: self._repo_json(r) for r in self.repos.values()})
            case ["repo", spec] | ["repo", spec, "info"]:
                repo, _ = self.resolve(spec)
                return JSONResponse(self._repo_json(repo))
            case ["repo", spec, "branch-versions", branch]:
                repo, _ = self.resolve(spec)
                return JSONResponse(self._branch_versions(repo, branch))
            case ["node", spec, "status"] | ["node", spec, "commit"]:
                repo, node = self.resolve(spec)
                return JSONResponse({"Locked": repo.nodes[node].locked})
            case ["node", spec, name, *rest]:
                repo, node = self.resolve(spec)
                instance = repo.instances.get(name)
                if instance is None:
                    raise DvidError(f"invalid data instance name {name!r}")
                return self._instance(request, repo, node, instance, rest)
        return Response(f"Could not find the URL: {request.url.path}", status_code=404,
                        media_type="text/plain")

    def _post(self, request: Request, parts: list[str], body: bytes) -> Response:
        """``POST …/raw/0_1_2/{size}/{offset}``: block-aligned voxels into an unlocked node
        (reference §1.3: "POST must be block-aligned"; a locked node rejects mutations).
        ``POST …/nextlabel/{n}`` on a labelmap: ``{"start": s, "end": e}``, n new labels
        (DVID's labelmap help: "gives incremental new label ids"), above every label held."""
        match parts:
            case ["node", spec, name, "nextlabel", count]:
                repo, node = self.resolve(spec)
                instance = repo.instances.get(name)
                if instance is None or instance.type_name != "labelmap":
                    raise DvidError(f"nextlabel is served by labelmap instances only: {name!r}")
                wanted = int(count)
                if wanted < 1:
                    raise DvidError("Unable to reserve 0 labels")
                start = self._next_label(instance)
                instance.next_label = start + wanted
                return JSONResponse({"start": start, "end": start + wanted - 1})
            case ["node", spec, name, "raw", "0_1_2", size_text, offset_text]:
                repo, node = self.resolve(spec)
                instance = repo.instances.get(name)
                if instance is None:
                    raise DvidError(f"invalid data instance name {name!r}")
            case _:
                raise DvidError(f"POST is not served here: {request.url.path}")
        size = self._triple(size_text, "size")
        offset = self._triple(offset_text, "offset")
        block = instance.block_size
        if min(size) <= 0 or any(v % b for v, b in zip((*size, *offset), block * 2,
                                                        strict=True)):
            raise DvidError(f"cannot store voxels at offset {offset_text} of size {size_text}: "
                            "not block aligned")
        expected = size[0] * size[1] * size[2] * instance.dtype.itemsize
        if len(body) != expected:
            raise DvidError(f"expected {expected} bytes of voxels, got {len(body)}")
        array = np.frombuffer(body, instance.dtype).reshape(size[::-1])
        self.posts.append(request.url.path)
        self.write(node, name, offset, array)
        return Response(b"")

    def _repo_json(self, repo: Repo) -> dict[str, Any]:
        nodes = {u: {"Branch": n.branch, "Note": "", "Log": [], "UUID": u,
                     "VersionID": n.version_id, "Locked": n.locked, "Parents": n.parents,
                     "Children": n.children, "Created": "", "Updated": ""}
                 for u, n in repo.nodes.items()}
        instances = {name: self._base_json(repo, i) for name, i in repo.instances.items()}
        return {"Root": repo.root, "Alias": repo.alias, "Description": "", "Log": [],
                "Properties": {}, "DataInstances": instances,
                "DAG": {"Root": repo.root, "Nodes": nodes}, "MutationID": 0,
                "SavedMutationID": 0, "Created": "", "Updated": ""}

    @staticmethod
    def _base_json(repo: Repo, instance: Instance) -> dict[str, Any]:
        compression = "LZ4 compression, level -1"
        return {"TypeName": instance.type_name,
                "TypeURL": f"github.com/janelia-flyem/dvid/datatype/{instance.type_name}",
                "TypeVersion": "0.1", "DataUUID": instance.data_uuid, "Name": instance.name,
                "RepoUUID": repo.root, "Compression": compression, "Checksum": "No checksum",
                "Syncs": [], "Versioned": True, "KVStore": "memory", "LogStore": "", "Tags": {}}

    def _info_json(self, repo: Repo, node: str, instance: Instance) -> dict[str, Any]:
        extents = instance.extents.get(node)
        lo, hi = extents if extents is not None else (None, None)
        block = list(instance.block_size)
        extended: dict[str, Any] = {
            "Values": [{"DataType": instance.dtype.name,
                        "Label": "labels" if instance.is_label else instance.dtype.name}],
            "Interpolable": not instance.is_label,
            "BlockSize": block,
            "VoxelSize": list(instance.voxel_size),
            "VoxelUnits": [instance.voxel_units] * 3,
            "MinPoint": lo,
            "MaxPoint": hi,
            "MinIndex": None if lo is None else [v // b for v, b in zip(lo, block, strict=True)],
            "MaxIndex": None if hi is None else [v // b for v, b in zip(hi, block, strict=True)],
            "Background": 0,
            "GridStore": None,
            "ScaleLevel": 0,
        }
        if instance.type_name in MULTISCALE_LABELS:
            extended.update({"MaxLabel": {}, "MaxRepoLabel": 0, "NextLabel": 0,
                             "IndexedLabels": True, "MaxDownresLevel": instance.max_downres})
        return {"Base": self._base_json(repo, instance), "Extended": extended,
                "Extents": {"MinPoint": lo, "MaxPoint": hi}}

    def _instance(self, request: Request, repo: Repo, node: str, instance: Instance,
                  rest: list[str]) -> Response:
        match rest:
            case ["info"]:
                return JSONResponse(self._info_json(repo, node, instance))
            case ["metadata"]:
                info = self._info_json(repo, node, instance)["Extended"]
                return JSONResponse({"Axes": [
                    {"Label": a, "Resolution": info["VoxelSize"][i], "Units": "nanometers",
                     "Size": 0, "Offset": 0} for i, a in enumerate("XYZ")],
                    "Properties": info}, media_type="application/vnd.dvid-nd-data+json")
            case [("raw" | "isotropic"), dims, size, offset, *fmt]:
                return self._raw(request, node, instance, dims, size, offset, fmt)
            case ["blocks", block, span] if not instance.is_label:
                return self._image_blocks(node, instance, block, span)
            case ["blocks", size, offset] if instance.is_label:
                return self._label_blocks(request, node, instance, size, offset)
            case ["subvolblocks", size, offset] if not instance.is_label:
                return self._framed(request, node, instance,
                                    self._aligned_blocks(instance, size, offset))
            case ["specificblocks"]:
                return self._framed(request, node, instance, self._listed_blocks(request))
            case ["nextlabel"] if instance.type_name == "labelmap":
                return JSONResponse({"nextlabel": self._next_label(instance)})
        raise DvidError(f"Bad API call ({'/'.join(rest)}) for data {instance.name!r}. "
                        f"See API help at http://127.0.0.1/api/help/{instance.type_name}")

    @staticmethod
    def _next_label(instance: Instance) -> int:
        """The first label never handed out: past the largest held and the last reserved."""
        held = max((int(levels[0].max()) for levels in instance.data.values() if levels),
                   default=0)
        return max(held + 1, instance.next_label)

    def _scale(self, request: Request, instance: Instance) -> int:
        raw = request.query_params.get("scale")
        if raw is None:
            return 0
        if instance.type_name not in MULTISCALE_LABELS:
            return 0  # imageblk has no scale parameter; it is ignored
        try:
            scale = int(raw)
        except ValueError as exc:
            raise DvidError(f"bad scale specified: {raw}") from exc
        if not 0 <= scale <= instance.max_downres:
            raise DvidError(f"scale {scale} exceeds MaxDownresLevel {instance.max_downres}")
        return scale

    def _read(self, node: str, instance: Instance, scale: int, offset: tuple[int, int, int],
              size: tuple[int, int, int]) -> np.ndarray:
        """Zero-filled where nothing was written (DVID's /raw buffer is zero-initialised)."""
        out = np.zeros(size[::-1], instance.dtype)
        scales = instance.data.get(node)
        if not scales:
            return out
        held = scales[scale]
        x, y, z = offset
        sx, sy, sz = size
        z1, y1, x1 = (min(z + sz, held.shape[0]), min(y + sy, held.shape[1]),
                      min(x + sx, held.shape[2]))
        if z < z1 and y < y1 and x < x1:
            out[: z1 - z, : y1 - y, : x1 - x] = held[z:z1, y:y1, x:x1]
        return out

    @staticmethod
    def _triple(text: str, what: str) -> tuple[int, int, int]:
        try:
            a, b, c = (int(v) for v in text.split("_"))
        except ValueError as exc:
            raise DvidError(f"bad {what} specified: {text!r}") from exc
        return a, b, c

    def _block_exists(self, node: str, instance: Instance, scale: int,
                      offset: tuple[int, int, int]) -> bool:
        scales = instance.data.get(node)
        if not scales:
            return False
        block = self._read(node, instance, scale, offset, instance.block_size)
        return bool(block.any())

    def _raw(self, request: Request, node: str, instance: Instance, dims: str, size_text: str,
             offset_text: str, fmt: list[str]) -> Response:
        if dims != "0_1_2":
            raise DvidError(f"only 3-D (0_1_2) requests are supported by this double: {dims}")
        size = self._triple(size_text, "size")
        offset = self._triple(offset_text, "offset")
        if min(size) <= 0:
            raise DvidError(f"bad size specified: {size_text!r}")
        params = request.query_params
        if params.get("throttle") in ("true", "on") and self.throttle_busy:
            raise DvidError("Server already running 1 throttled operations", status=503)
        scale = self._scale(request, instance)
        compression = params.get("compression", "") if instance.is_label else ""
        if compression not in ("", "lz4", "gzip"):
            raise DvidError(f"unknown compression type {compression!r}")
        single_block = size == instance.block_size and all(
            o % b == 0 for o, b in zip(offset, instance.block_size, strict=True))
        if (instance.type_name == "labelmap" and single_block and compression
                and not self._block_exists(node, instance, scale, offset)):
            raise DvidError("unable to get label block")
        data = self._read(node, instance, scale, offset, size)
        if fmt and fmt[0] in ("jpeg", "jpg") and not instance.is_label:
            out = io.BytesIO()
            sz, sy, sx = data.shape
            Image.fromarray(data.reshape(sz * sy, sx).astype(np.uint8)).save(out, "JPEG")
            return Response(out.getvalue(), media_type="image/jpeg")
        body = data.tobytes()
        if compression == "lz4":
            body = lz4.block.compress(body, store_size=False)
        elif compression == "gzip":
            body = gzip.compress(body)
        return Response(body, media_type="application/octet-stream")

    def _image_blocks(self, node: str, instance: Instance, block_text: str,
                      span_text: str) -> Response:
        bx, by, bz = self._triple(block_text, "block coordinate")
        try:
            span = int(span_text)
        except ValueError as exc:
            raise DvidError(f"bad span {span_text!r}") from exc
        size = instance.block_size
        body = b"".join(
            self._read(node, instance, 0, ((bx + i) * size[0], by * size[1], bz * size[2]),
                       size).tobytes()
            for i in range(span)
        )
        return Response(body, media_type="application/octet-stream")

    def _label_blocks(self, request: Request, node: str, instance: Instance, size_text: str,
                      offset_text: str) -> Response:
        return self._framed(request, node, instance,
                            self._aligned_blocks(instance, size_text, offset_text))

    def _aligned_blocks(self, instance: Instance, size_text: str,
                        offset_text: str) -> list[tuple[int, int, int]]:
        size = self._triple(size_text, "size")
        offset = self._triple(offset_text, "offset")
        block = instance.block_size
        if any(v % b for v, b in zip((*size, *offset), (*block, *block), strict=True)):
            raise DvidError("block endpoint requires block-aligned size and offset")
        return [(bx, by, bz)
                for bz in range(offset[2] // block[2], (offset[2] + size[2]) // block[2])
                for by in range(offset[1] // block[1], (offset[1] + size[1]) // block[1])
                for bx in range(offset[0] // block[0], (offset[0] + size[0]) // block[0])]

    def _listed_blocks(self, request: Request) -> list[tuple[int, int, int]]:
        raw = request.query_params.get("blocks", "")
        try:
            values = [int(v) for v in raw.split(",") if v]
        except ValueError as exc:
            raise DvidError(f"bad blocks list {raw!r}") from exc
        if len(values) % 3:
            raise DvidError("blocks must be a list of x,y,z block coordinates")
        return [(values[i], values[i + 1], values[i + 2]) for i in range(0, len(values), 3)]

    def _framed(self, request: Request, node: str, instance: Instance,
                blocks: list[tuple[int, int, int]]) -> Response:
        """[int32 bx, by, bz, int32 nbytes, payload]… little-endian; missing blocks omitted.
        Labels default to a bare LZ4 block per payload (DVID's code, not its help text);
        images are stored uncompressed here, so that is what they send."""
        default = "lz4" if instance.is_label else "uncompressed"
        compression = request.query_params.get("compression") or default
        allowed = ("lz4", "uncompressed", "gzip") if instance.is_label else ("uncompressed",
                                                                               "jpeg")
        if compression not in allowed:
            raise DvidError(f"unknown compression type {compression!r}")
        scale = self._scale(request, instance)
        block = instance.block_size
        out = io.BytesIO()
        for bx, by, bz in blocks:
            corner = (bx * block[0], by * block[1], bz * block[2])
            if not self._block_exists(node, instance, scale, corner):
                continue
            raw = self._read(node, instance, scale, corner, block).tobytes()
            payload = (lz4.block.compress(raw, store_size=False) if compression == "lz4" else
                       gzip.compress(raw) if compression == "gzip" else raw)
            out.write(struct.pack("<iiii", bx, by, bz, len(payload)) + payload)
        return Response(out.getvalue(), media_type="application/octet-stream")

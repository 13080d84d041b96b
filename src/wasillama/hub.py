"""GGUF models by name from the Hugging Face hub, in the hub's own cache.

    fetch("owner/repo")                  the preferred quant (QUANT_PREFERENCE) of the repo's GGUFs
    fetch("owner/repo:Q8_0")             a quant by name
    fetch("owner/repo/sub/model.gguf")   a file (also "owner/repo:model.gguf")
    fetch("owner/repo@<revision>:Q4_0")  at a branch, tag or commit

`Model.load("hf://...")` and the CLI's `-m hf://...` come here. A split GGUF (its parts named
`-00001-of-0000N.gguf`) is fetched whole and its first part returned. Every file is checked
against the sha256 the hub publishes (a corrupt download is fetched again once; a corrupt
cached file in offline mode is an error that says how to repair it); a file that passed is not
hashed again until it changes. A reference the cache holds resolves without the network
(`refresh=True`, what `wasillama pull` does, asks the hub first); `HF_HUB_OFFLINE=1` never asks.
huggingface_hub is imported on first use, never when wasillama is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError, WasillamaError
from .gguf_file import SPLIT_NAME
from .paths import cache_dir

log = logging.getLogger(__name__)

# What `owner/repo` without a quant picks, best first: the 4-bit k-quant most GGUF repos
# recommend (llama.cpp's -hf and Ollama default to Q4_K_M), then near sizes, then the rest.
QUANT_PREFERENCE = ("Q4_K_M", "Q4_K_S", "Q4_0", "IQ4_XS", "IQ4_NL", "Q4_1", "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1",
                    "Q6_K", "Q8_0", "Q3_K_L", "Q3_K_M", "Q3_K_S", "BF16", "F16", "Q2_K", "F32")
_QUANT = re.compile(r"(?<![A-Za-z0-9])(I?Q\d_[A-Z0-9]+(?:_[A-Z]+)?|B?F16|F32|MXFP4|TQ\d_\d)(?![A-Za-z0-9])", re.I)
_REF = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<rev>[\w./-]+?))?(?:(?::|/)(?P<rest>.+))?$")


class HubError(WasillamaError):
    """The hub could not be asked, or it has no GGUF that matches the reference."""


class CorruptDownloadError(HubError):
    """A file does not match the sha256 the hub publishes for it."""


@dataclass(frozen=True)
class HubRef:
    """A parsed reference: a repository, and a file, a quant or neither (the preferred quant)."""

    repo: str
    revision: str | None = None
    file: str | None = None
    quant: str | None = None

    @classmethod
    def parse(cls, ref: str) -> HubRef:
        m = _REF.match(ref.strip())
        if m is None:
            raise HubError(f"not a hub reference: {ref!r} (owner/repo, owner/repo:QUANT or owner/repo/file.gguf)")
        rest = m["rest"]
        if rest is None:
            return cls(m["repo"], m["rev"])
        if rest.lower().endswith(".gguf"):
            return cls(m["repo"], m["rev"], file=rest)
        if _QUANT.fullmatch(rest) is None:
            raise HubError(f"{rest!r} in {ref!r} is neither a .gguf file nor a quant name (such as Q4_K_M)")
        return cls(m["repo"], m["rev"], quant=rest.upper())

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        what = self.file or self.quant
        return f"{self.repo}{rev}" + (f":{what}" if what else "")


def quant_of(filename: str) -> str | None:
    """The quant a GGUF file name says it holds (the last one named), upper-case."""
    found = _QUANT.findall(Path(filename).name)
    return found[-1].upper() if found else None


@dataclass(frozen=True)
class Choice:
    """The files of one model in a repository: one, or every part of a split GGUF."""

    files: tuple[str, ...]

    @property
    def first(self) -> str:
        return self.files[0]


def models_in(filenames: Iterable[str]) -> list[Choice]:
    """The GGUF models among a repository's files: a split's parts together (only complete ones),
    multimodal projectors left out."""
    names = sorted(f for f in filenames if f.lower().endswith(".gguf") and "mmproj" not in Path(f).name.lower())
    out: list[Choice] = []
    parts: dict[tuple[str, str, int], list[str]] = {}
    for f in names:
        m = SPLIT_NAME.match(Path(f).name)
        if m is None:
            out.append(Choice((f,)))
        else:
            parts.setdefault((str(Path(f).parent), m["prefix"], int(m["count"])), []).append(f)
    for (_, _, count), files in parts.items():
        if len(files) == count:
            out.append(Choice(tuple(sorted(files))))
    return sorted(out, key=lambda c: c.first)


def choose(ref: HubRef, filenames: Iterable[str]) -> Choice:
    """The model `ref` names among `filenames` (HubError, listing what there is, when none is)."""
    models = models_in(filenames)
    if ref.file is not None:
        for c in models:
            if ref.file in c.files:
                return Choice(c.files) if ref.file == c.first else Choice((ref.file,))
        raise HubError(f"{ref.repo} has no file {ref.file}" + _listing(models))
    if not models:
        raise HubError(f"{ref.repo} has no GGUF files")
    by_quant: dict[str, list[Choice]] = {}
    for c in models:
        by_quant.setdefault(quant_of(c.first) or "", []).append(c)
    wanted = [ref.quant] if ref.quant else [q for q in QUANT_PREFERENCE if q in by_quant]
    if not wanted and len(models) == 1:
        return models[0]
    for q in wanted:
        found = by_quant.get(q, [])
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise HubError(f"{ref.repo} has several {q} files; name one" + _listing(found))
    raise HubError(f"{ref.repo} has no {ref.quant or 'preferred'} GGUF" + _listing(models))


def _listing(models: list[Choice]) -> str:
    return ": " + ", ".join(c.first for c in models) if models else ""


# ---- the cache ---------------------------------------------------------------------------------

def hub_cache() -> Path:
    """The hub's cache, as huggingface_hub finds it (read now, not when it was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                     "huggingface")
    return Path(home) / "hub"


def endpoint() -> str | None:
    """$HF_ENDPOINT (a mirror, or a local hub), read now; None: huggingface_hub's default."""
    return os.environ.get("HF_ENDPOINT") or None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _repo_dir(repo: str) -> Path:
    return hub_cache() / ("models--" + repo.replace("/", "--"))


def cached_snapshot(repo: str, revision: str | None) -> Path | None:
    """The cached snapshot directory of `repo` at `revision` (a branch or tag the cache has a ref
    for, or a commit), or None."""
    d = _repo_dir(repo)
    rev = revision or "main"
    ref = d / "refs" / rev
    commit = ref.read_text().strip() if ref.is_file() else rev
    snap = d / "snapshots" / commit
    return snap if re.fullmatch(r"[0-9a-f]{40}", commit) and snap.is_dir() else None


def _cached_files(snapshot: Path) -> list[str]:
    return [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*.gguf") if p.is_file()]


def _verified_marker(sha256: str) -> Path:
    return cache_dir() / "hub-verified" / sha256


def _digest_ok(path: Path, digest: str) -> bool:
    """Whether the file has the hub's `digest`: the sha256 of an LFS file (64 hex digits) or the
    git blob sha1 of a small file kept in git (40). Remembered by size and mtime once it has."""
    real = path.resolve()
    st = real.stat()
    stamp = f"{real} {st.st_size} {st.st_mtime_ns}"
    marker = _verified_marker(digest)
    try:
        if marker.read_text() == stamp:
            return True
    except OSError:
        pass
    h = hashlib.sha256() if len(digest) == 64 else hashlib.sha1(b"blob %d\0" % st.st_size)
    with open(real, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    if h.hexdigest() != digest:
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(stamp)
    return True


def _cached_digest(path: Path) -> str | None:
    """The digest the hub gave for a cached file: huggingface_hub names each blob by its etag,
    which is the sha256 for an LFS file and the git sha1 for a file kept in git."""
    name = path.resolve().name
    return name if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", name) else None


# ---- fetching ----------------------------------------------------------------------------------

def _silent_tqdm() -> type[Any]:
    """A tqdm class that draws nothing, for hf_hub_download(tqdm_class=...) when quiet."""
    from tqdm.auto import tqdm

    class Silent(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})

    return Silent


def fetch(reference: str, *, refresh: bool = False, quiet: bool = False) -> Path:
    """The local path of the model `reference` names (its first part when split), fetched into the
    hub's cache and verified unless it is there already; see the module's docstring."""
    ref = HubRef.parse(reference)
    if not refresh or offline():
        path = _from_cache(ref)
        if path is not None:
            return path
        if offline():
            raise ModelNotFoundError(f"{ref} is not in the hub cache ({hub_cache()}) and HF_HUB_OFFLINE is set")
    return _download(ref, quiet=quiet)


def _from_cache(ref: HubRef) -> Path | None:
    snap = cached_snapshot(ref.repo, ref.revision)
    if snap is None:
        return None
    try:
        choice = choose(ref, _cached_files(snap))
    except HubError:
        return None
    for f in choice.files:
        path = snap / f
        sha = _cached_digest(path)
        if sha is not None and not _digest_ok(path, sha):
            raise CorruptDownloadError(
                f"the cached {f} of {ref.repo} does not match the sha256 the hub gave for it ({sha[:12]}…): "
                f"fetch it again with `wasillama pull {ref.repo}:{f}` (online) or remove it with "
                f"`wasillama rm {ref.repo}:{f}`")
    log.info("%s: %s from the cache", ref, choice.first)
    return snap / choice.first


def _download(ref: HubRef, *, quiet: bool) -> Path:
    import huggingface_hub as hf
    from huggingface_hub.errors import HfHubHTTPError

    cache = hub_cache()
    try:
        info = hf.HfApi(endpoint=endpoint()).model_info(ref.repo, revision=ref.revision, files_metadata=True)
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        if status in (401, 403, 404):
            raise HubError(f"the hub has no model {ref.repo}" + (f" at {ref.revision}" if ref.revision else "")
                           + f" you can read ({status})") from e
        raise HubError(f"the hub refused {ref}: {e}") from e
    except Exception as e:  # no network: what the cache has still works
        path = _from_cache(ref)
        if path is not None:
            log.warning("cannot reach the hub (%s); using the cached %s", e, path.name)
            return path
        raise HubError(f"cannot reach the hub for {ref} and it is not in the cache ({hub_cache()}): {e}") from e
    siblings = {s.rfilename: s for s in info.siblings or []}
    choice = choose(ref, siblings)
    paths = []
    tqdm_class = _silent_tqdm() if quiet else None
    for f in choice.files:
        lfs = siblings[f].lfs
        sha = lfs.sha256 if lfs is not None else siblings[f].blob_id
        path = None
        for attempt in range(2):
            try:
                path = Path(hf.hf_hub_download(ref.repo, f, revision=ref.revision, cache_dir=cache,
                                               endpoint=endpoint(), force_download=attempt > 0,
                                               tqdm_class=tqdm_class))
            except Exception as e:  # the network or the disk: a clear error, not the client's own
                raise HubError(f"downloading {f} of {ref.repo} failed: {e}") from e
            if sha is None or _digest_ok(path, sha):
                break
            log.warning("%s does not match the hub's sha256: fetching it again", f)
        else:
            assert path is not None
            path.resolve().unlink(missing_ok=True)  # not left in the cache for a later load to find
            path.unlink(missing_ok=True)
            raise CorruptDownloadError(f"{f} of {ref.repo} does not match the hub's digest {sha} after two "
                                       "downloads; it was not used")
        paths.append(path)
    return paths[0]


# ---- what is cached: `wasillama models` and `wasillama rm` ----------------------------------------

@dataclass(frozen=True)
class CachedModel:
    """A GGUF model in the hub's cache (its first part when split)."""

    repo: str
    revision: str  # commit
    file: str
    path: Path
    size: int  # all parts
    parts: int

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.file}"


def cached_models() -> list[CachedModel]:
    out = []
    root = hub_cache()
    for d in sorted(root.glob("models--*--*")) if root.is_dir() else []:
        repo = d.name[len("models--"):].replace("--", "/", 1)
        for snap in sorted((d / "snapshots").glob("*")):
            for c in models_in(_cached_files(snap)):
                size = sum((snap / f).stat().st_size for f in c.files)
                out.append(CachedModel(repo, snap.name, c.first, snap / c.first, size, len(c.files)))
    return out


def remove(reference: str) -> list[Path]:
    """Remove from the cache: a whole repository ("owner/repo"), or one model ("owner/repo:QUANT"
    or "owner/repo:file.gguf", every part of a split), at every cached revision. The paths removed."""
    ref = HubRef.parse(reference)
    d = _repo_dir(ref.repo)
    if not d.is_dir():
        raise ModelNotFoundError(f"{ref.repo} is not in the hub cache ({hub_cache()})")
    if ref.file is None and ref.quant is None:
        shutil.rmtree(d)
        return [d]
    removed: list[Path] = []
    blobs: set[Path] = set()
    for snap in (d / "snapshots").glob("*"):
        try:
            choice = choose(ref, _cached_files(snap))
        except HubError:
            continue
        for f in choice.files:
            link = snap / f
            blobs.add(link.resolve())
            link.unlink()
            removed.append(link)
    if not removed:
        raise ModelNotFoundError(f"the hub cache has no {ref}")
    still = {p.resolve() for p in (d / "snapshots").rglob("*") if p.is_symlink()}
    for blob in blobs - still:
        if blob.parent == (d / "blobs").resolve():  # never a file a tampered link points at elsewhere
            blob.unlink(missing_ok=True)
    return removed


def describe_cached(model: CachedModel) -> dict[str, Any]:
    """What `wasillama models` shows of a cached model (architecture and quant from its header)."""
    from .gguf_file import read_header

    arch = quant = None
    try:
        header = read_header(model.path)
        arch, quant = header.architecture, header.quant
    except (OSError, WasillamaError):
        pass
    return {"model": model.ref, "repo": model.repo, "file": model.file, "revision": model.revision,
            "path": str(model.path), "size": model.size, "parts": model.parts, "architecture": arch,
            "quant": quant or quant_of(model.file)}

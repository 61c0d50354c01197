"""Size thresholds and limits, in one place so that tests can lower them.

Every module reads these at call time (``_limits.LARGE_BYTES``, never a copy
bound at import), so ``monkeypatch.setattr(unified_params._limits, ...)``
drives the large-model paths with small models.
"""

from __future__ import annotations

#: Above this many bytes, a write into host memory keeps no backups unless
#: asked to (``write_atomic(backup=True)``), and saves, loads and ports show
#: a progress bar when stderr is a terminal.
LARGE_BYTES = 256 << 20

#: Largest safetensors JSON header read (safetensors' own ``MAX_HEADER_SIZE``).
MAX_HEADER_BYTES = 100_000_000

#: A file being loaded is checked unchanged (size, mtime, inode) around every
#: tensor of at least this many bytes, and once per this many bytes of
#: smaller ones (and after the last write of a load).
CHECK_BYTES = 1 << 20

#: Small storages are read and written in batches of up to this many bytes
#: (one ``Handle.read_many``/``write_many`` call each, issue 13); a larger
#: storage is a batch of its own, so a load or port still holds one large
#: value at a time.
BATCH_BYTES = 1 << 20

#: An atomic write (a load, a port, an init) of more than this many bytes
#: keeps the old values of its undo in an unlinked temporary file in
#: ``UNDO_DIR`` (``None``: ``tempfile.gettempdir()``, i.e. ``TMPDIR``)
#: instead of memory (``_undo``), so that a load holds one model, not two.
UNDO_SPILL_BYTES = 64 << 20
UNDO_DIR: str | None = None
#: Above ``UNDO_SPILL_BYTES``, let the undo file also replace the framework's
#: own immutable snapshots (JAX arrays, TensorFlow tensors: no copy, but the
#: old values stay alive until the write ends); sharded storages keep theirs.
#: Off: those frameworks' writes allocate new buffers anyway, so measured
#: peaks stayed at one model either way, and the file cost a copy.
UNDO_SPILL_SNAPSHOTS = False
#: Write the undo file from one background thread, one storage ahead of the
#: writes. Off by default: on the 2 shared cores where it was measured it
#: cost more CPU time than it hid (docs/benchmarks.md); a machine with idle
#: cores may gain from it.
UNDO_THREAD = False

#: Side of the tiles of a large transposed copy (``_layout.contiguous``), in
#: elements, and the size above which copies are tiled.
TILE = 128
TILED_BYTES = 1 << 20
#: A transposed matrix is copied in strips of ``STRIP_ROWS`` rows by
#: ``STRIP_BYTES`` of columns: each destination row segment is one
#: cache line's half, each source row read in long runs (3x faster than
#: square tiles on float32).
STRIP_ROWS = 512
STRIP_BYTES = 32

#: A file's tensor that a layout conversion copies anyway (a kernel-last
#: storage's load) of at least ``READ_BUFFER_FROM`` and at most
#: ``READ_BUFFER_BYTES`` bytes is read into one reused buffer per thread
#: (``_fastpath._read_buffer``), then converted once into its own array.
READ_BUFFER_FROM = 1 << 20
READ_BUFFER_BYTES = 256 << 20

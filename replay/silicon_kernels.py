"""The kernel tables each silicon row reads: one :class:`KernelSet` per engine version."""

from __future__ import annotations

from mist.calibrate.kernels import Datasheet, KernelSet
from mist.traces.readers.aiconfigurator import picked_tables, read_kernel_db


class KernelVersions:
    """One :class:`KernelSet` per set of tables the rows' engine versions pick.

    A row reads the kernel tables measured nearest its own ``backend_version`` (the
    serving engine's own tables first, :func:`picked_tables`); rows that name no
    version read those nearest ``default``. Versions that pick the same tables share
    one set, read when a row first asks for it (the folder holds many versions, and
    a run needs few of them).
    """

    def __init__(self, system_dir, sheet: Datasheet, hardware: str | None = None,
                 framework: str | None = None, default: str | None = None):
        self.system_dir, self.sheet, self.hardware = system_dir, sheet, hardware
        self.framework, self.default = framework, default
        self._sets: dict[tuple, KernelSet] = {}
        self._picks: dict[str | None, tuple] = {}

    def picks(self, version: str | None) -> tuple:
        """``(table stem, framework, version)`` of each table a version reads (the
        folder is listed once per version)."""
        if version not in self._picks:
            chosen = picked_tables(self.system_dir, version or self.default, self.framework)
            self._picks[version] = tuple(sorted((stem, fw, ver) for stem, (fw, ver, _) in chosen.items()))
        return self._picks[version]

    def for_version(self, version: str | None) -> KernelSet:
        """The kernel set of the tables nearest ``version`` (None: nearest ``default``)."""
        key = self.picks(version)
        if key not in self._sets:
            profile = read_kernel_db(self.system_dir, version or self.default, self.hardware, self.framework)
            self._sets[key] = KernelSet(profile, self.sheet)
        return self._sets[key]

    def gemm_table(self, version: str | None) -> str:
        """``framework version`` of the GEMM table a version reads."""
        return next((f"{fw} {ver}" for stem, fw, ver in self.picks(version) if stem == "gemm_perf"), "")

    def tally(self) -> dict:
        """Queries answered by every set, by kernel family and source."""
        out: dict = {}
        for ks in self._sets.values():
            for fam, srcs in ks.tally().items():
                for src, c in srcs.items():
                    out.setdefault(fam, {})[src] = out.get(fam, {}).get(src, 0) + c
        return {fam: dict(sorted(srcs.items())) for fam, srcs in sorted(out.items())}

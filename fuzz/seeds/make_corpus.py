#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets, fuzz/corpus/<target>/.

Not needed by CI (the corpus is committed); see fuzz/README.md for what each
seed is. The regression inputs (regress-*) are not made here, and are kept. Regenerate with, from the repository root:
    cargo build --bin vmwatch && python3 fuzz/seeds/make_corpus.py
Needs gcc and systemtap-sdt-dev (<sys/sdt.h>). The datasets are the first
rows and a few columns of data/web.csv.gz and data/idle.csv.gz; the model
is what `vmwatch train` (its grid search) makes of the small web dataset. The ELF files
depend on the compiler version, the rest is byte-for-byte reproducible.
"""
import csv
import gzip
import io
import json
import pathlib
import subprocess
import tempfile
import zlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus"
SEEDS = ROOT / "fuzz" / "seeds"
VMWATCH = ROOT / "target" / "debug" / "vmwatch"

LEADING = ["vm", "pid", "label", "window", "start_unix_ms", "duration_ms"]
# Busy and quiet features of the lab's recordings, from each source.
FEATURES = [
    "qemu:translate_block",
    "qemu:qemu_memalign",
    "qemu:virtqueue_pop",
    "qemu:virtio_notify",
    "sys:futex",
    "sys:writev",
    "kvm:kvm_ack_irq",
]
ROWS = 12


def small_dataset(name):
    """The first ROWS rows of data/NAME.csv.gz, FEATURES only, as CSV text."""
    with gzip.open(ROOT / "data" / f"{name}.csv.gz", "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        cols = [header.index(c) for c in LEADING + FEATURES]
        rows = [[r[c] for c in cols] for _, r in zip(range(ROWS), reader)]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(LEADING + FEATURES)
    w.writerows(rows)
    return out.getvalue()


def gzip_whole(text):
    return gzip.compress(text.encode(), mtime=0)


def gzip_unfinished(text):
    """What a SIGKILLed writer leaves: a sync flush, no trailer."""
    buf = io.BytesIO()
    gz = gzip.GzipFile(fileobj=buf, mode="wb", mtime=0)
    gz.write(text.encode())
    gz.flush(zlib.Z_SYNC_FLUSH)
    return buf.getvalue()


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data.encode() if isinstance(data, str) else data)


def datasets():
    web = small_dataset("web")
    idle = small_dataset("idle")
    head = web.splitlines(keepends=True)
    write("dataset", "web.csv", web)
    write("dataset", "idle.csv.gz", gzip_whole(idle))
    write("dataset", "header-only.csv", head[0])
    # Cut inside the fourth row, as a crash leaves a plain file.
    write("dataset", "cut-row.csv", "".join(head[:4]) + head[4][:25])
    write("dataset", "unfinished.csv.gz", gzip_unfinished("".join(head[:5])))
    # A power loss can leave zeros after the last write.
    write("dataset", "zero-tail.csv.gz", gzip_unfinished("".join(head[:3])) + bytes(64))
    # Cut in the middle of the deflate data: damaged, not readable.
    whole = gzip_whole(idle)
    write("dataset", "truncated.csv.gz", whole[: len(whole) // 2])
    # Two gzip members (e.g. files concatenated with cat).
    write("dataset", "two-members.csv.gz", gzip_whole("".join(head[:3])) + gzip_whole("".join(head[3:6])))
    # Quoted fields (a VM name with a comma and quotes) and CRLF line ends.
    quoted = (
        ",".join(LEADING + ["qemu:tap_send", "sys:read"]) + "\r\n"
        '"web,1",42,idle,0,1000,2000,5,0\r\n'
        '"say ""hi""",43,web,1,3000,2000,18446744073709551615,7\r\n'
    )
    write("dataset", "quoted-crlf.csv", quoted)
    # The provenance columns vmwatch writes after the leading ones: a build
    # id, a quoted version, and a row of unknown provenance.
    provenance = (
        ",".join(LEADING + ["qemu_build_id", "qemu_version", "qemu:tap_send"]) + "\n"
        'web,42,idle,0,1000,2000,31e9b22e9344e1a2e6279b0294103e5f4642d1b7,"7.2.22 (Debian, vmwatch)",5\n'
        "web,42,idle,1,3000,2000,,,7\n"
    )
    write("dataset", "provenance.csv", provenance)
    return web


def models(web):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "web.csv").write_text(web)
        # Relative paths: the model records its training files.
        subprocess.run(
            [VMWATCH, "train", "web.csv", "--smooth", "3/5", "-o", "model.json"],
            check=True,
            cwd=tmp,
        )
        pretty = (tmp / "model.json").read_bytes()
    write("model", "model.json", pretty)
    compact = json.dumps(json.loads(pretty), separators=(",", ":"))
    write("model", "model-compact.json", compact)
    # The QEMU builds a model was trained on (none in web.csv).
    builds = json.loads(pretty)
    builds["training"]["qemu_builds"] = [
        {"build_id": "31e9b22e9344e1a2e6279b0294103e5f4642d1b7", "version": "7.2.22 (Debian)"},
        {"build_id": "00ff", "version": None},
    ]
    write("model", "model-qemu-builds.json", json.dumps(builds, indent=2))


def feature_lists():
    write("features", "selected.txt", "\n".join(FEATURES) + "\n")
    write(
        "features",
        "comments.txt",
        "# chosen by vmwatch select\n"
        "translate_block\n"
        "\n"
        "  qemu:virtqueue_pop   # a comment\n"
        "sys:futex\n"
        "qemu:translate_block\n",
    )
    write("features", "crlf.txt", "qemu:tap_send\r\nsys:read\r\n# end\r\n")


def elf_files():
    flags = ["-O2", "-s", "-Wl,-z,noseparate-code", "-Wl,--build-id=none"]
    # One RWX segment and no libc: an executable of about 1 KiB.
    tiny = ["-DTINY", "-nostdlib", "-static", "-fno-pie", "-no-pie", "-Wl,-N",
            "-Wl,--no-warn-rwx-segments"]
    srcs = [SEEDS / "usdt.c", SEEDS / "plain.c"]
    builds = [
        ("usdt-tiny", tiny, srcs),
        ("usdt-tiny-nop5", tiny + ["-DNOP5"], srcs),
        ("usdt-pie", [], srcs),
        ("libusdt-nop5.so", ["-DNOP5", "-shared", "-fPIC"], srcs),
        ("no-notes", tiny, [SEEDS / "none.c"]),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra, src in builds:
            out = pathlib.Path(tmp) / name
            subprocess.run(["gcc", *flags, *extra, "-o", out, *src], check=True)
            write("stapsdt", name, out.read_bytes())
            if name == "usdt-tiny":
                # QEMU's -version banner after the image (vmwatch reads the
                # version from the file).
                banner = b"QEMU emulator version 7.2.22 (seed, Debian)\nCopyright"
                write("stapsdt", "usdt-tiny-banner", out.read_bytes() + banner)


def main():
    # Regression inputs (regress-*, from fuzzing) are kept.
    for target in ["dataset", "model", "features", "stapsdt"]:
        for f in (CORPUS / target).glob("*"):
            if not f.name.startswith("regress-"):
                f.unlink()
    web = datasets()
    models(web)
    feature_lists()
    elf_files()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The house's layout rules (DESIGN §3, STYLE §2.1), checked over the source tree.

Fails (exit 1, one line per violation) when a .cu file sits outside kernels/, a folder includes a
folder it may not depend on, a kasmina room includes a room above it, a CMake list globs, or a
Cap'n Proto header reaches a file nvcc compiles. Run by ctest (tests/layout/CMakeLists.txt).
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
SOURCE_DIRS = ["core", "kernels", "bus", "kasmina", "tamiyo", "agents", "schemas"]
# Who may include whom (the first path component of a quoted include).
ALLOWED = {
    "core": {"core"},
    "kernels": {"kernels"},
    "bus": {"bus", "core", "schemas"},
    "kasmina": {"kasmina", "kernels", "core", "schemas"},
    "tamiyo": {"tamiyo", "core", "kernels"},
    "agents": {"agents", "bus", "core", "kernels", "kasmina", "tamiyo", "schemas", "web"},
    # web/ holds the page and report assets; its C++ (web/assets.h) is generated into the build
    # tree, and only agents/ (the HTTP server and the report) includes it.
    "web": {"web"},
}
# kasmina rooms, lowest first: a room includes only itself and rooms before it.
ROOMS = ["model", "lifecycle", "io", "dist", "train"]
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)

problems = []


def rel(p):
    return p.relative_to(ROOT).as_posix()


def sources():
    for d in SOURCE_DIRS:
        for p in sorted((ROOT / d).rglob("*")):
            if p.suffix in {".h", ".cpp", ".cu", ".cuh", ".c"}:
                yield p


for p in sources():
    top = rel(p).split("/")[0]
    text = p.read_text(encoding="utf-8", errors="replace")
    if p.suffix in {".cu", ".cuh"} and top != "kernels":
        problems.append(f"{rel(p)}: CUDA source outside kernels/")
    for inc in INCLUDE.findall(text):
        first = inc.split("/")[0]
        if first in ALLOWED and first not in ALLOWED.get(top, {first}):
            problems.append(f"{rel(p)}: {top}/ may not include {inc}")
        if top == "tamiyo" and inc.startswith("kernels/") and inc != "kernels/vocabulary.h":
            problems.append(f"{rel(p)}: tamiyo/ sees only kernels/vocabulary.h, not {inc}")
        if top == "bus" and inc.startswith("schemas/") and inc != "schemas/envelope.capnp.h":
            problems.append(f"{rel(p)}: bus/ routes on the envelope only, not {inc}")
        if top == "kasmina" and inc.startswith("schemas/"):
            room = rel(p).split("/")[1]
            if room not in {"io"} or p.suffix != ".cpp":
                problems.append(f"{rel(p)}: only kasmina/io/*.cpp encode schemas, not {inc}")
        if top == "kasmina" and inc.startswith("kasmina/"):
            parts = rel(p).split("/")
            if len(parts) < 3 or parts[1] not in ROOMS:
                problems.append(f"{rel(p)}: kasmina sources live in a room ({', '.join(ROOMS)})")
                continue
            mine, theirs = parts[1], inc.split("/")[1]
            if theirs not in ROOMS:
                problems.append(f"{rel(p)}: includes {inc}, outside the rooms")
            elif ROOMS.index(theirs) > ROOMS.index(mine):
                problems.append(f"{rel(p)}: room {mine}/ may not include {inc} (room order "
                                f"{' < '.join(ROOMS)})")
        if p.suffix in {".cu", ".cuh"} and (inc.startswith("schemas/") or "capnp" in inc
                                            or "zmq" in inc):
            problems.append(f"{rel(p)}: nvcc cannot compile {inc}")
    if p.suffix in {".cu", ".cuh"}:
        for sys_inc in re.findall(r'^\s*#\s*include\s+<([^>]+)>', text, re.M):
            if sys_inc.startswith(("capnp/", "kj/", "zmq")):
                problems.append(f"{rel(p)}: nvcc cannot compile <{sys_inc}>")

for p in sorted((ROOT / "web").rglob("*")) if (ROOT / "web").is_dir() else []:
    if p.suffix in {".h", ".hpp", ".cpp", ".cc", ".c", ".cu", ".cuh"}:
        problems.append(f"{rel(p)}: web/ holds assets only (the C++ is generated)")

for cm in sorted(ROOT.rglob("CMakeLists.txt")):
    if any(part.startswith("build") for part in cm.relative_to(ROOT).parts):
        continue
    if re.search(r"file\s*\(\s*GLOB", cm.read_text()):
        problems.append(f"{rel(cm)}: source lists are explicit (no file(GLOB))")

for line in problems:
    print(line)
print(f"layout: {len(problems)} problem(s)")
sys.exit(1 if problems else 0)

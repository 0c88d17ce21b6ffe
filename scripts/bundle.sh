#!/usr/bin/env bash
# bundle.sh [--tar] BUILD_DIR OUT_DIR: copies the built binaries (BUILD_DIR/bin) into OUT_DIR/bin and the
# non-system shared libraries they load (found with ldd) into OUT_DIR/lib, so the build runs on a
# GPU node without the Debian packages. RPATH becomes $ORIGIN/../lib via patchelf when installed;
# otherwise each binary gets a wrapper that sets LD_LIBRARY_PATH. libc/libm/libstdc++/libgcc,
# the dynamic loader, libcuda (the driver's), libnccl and the CUDA toolkit's cuBLAS/cudart (the node's)
# are never bundled. --tar also writes OUT_DIR.tar.gz, one archive to copy to every node and
# unpack at the same place (tar -xzf esper.tar.gz -C /opt gives /opt/esper/bin/esper).
set -euo pipefail

tar_out=0
if [ "${1:-}" = "--tar" ]; then
  tar_out=1
  shift
fi
if [ $# -ne 2 ]; then
  echo "usage: scripts/bundle.sh [--tar] BUILD_DIR OUT_DIR" >&2
  exit 2
fi
build_dir=$1
out_dir=$2
if [ ! -d "$build_dir/bin" ]; then
  echo "bundle.sh: $build_dir/bin not found (build first: scripts/build.sh)" >&2
  exit 1
fi
mkdir -p "$out_dir/bin" "$out_dir/lib"

is_system_lib() {
  case "$(basename "$1")" in
    libc.so*|libm.so*|libstdc++.so*|libgcc_s.so*|ld-linux*|libdl.so*|libpthread.so*|librt.so*) return 0 ;;
    libcuda.so*|libnccl.so*|linux-vdso*|libutil.so*|libresolv.so*) return 0 ;;
    # The CUDA toolkit's own libraries (hundreds of MB) come from the GPU node's toolkit.
    libcublas.so*|libcublasLt.so*|libcudart.so*) return 0 ;;
  esac
  return 1
}

have_patchelf=0
command -v patchelf >/dev/null 2>&1 && have_patchelf=1

for bin in "$build_dir"/bin/*; do
  [ -f "$bin" ] && [ -x "$bin" ] || continue
  name=$(basename "$bin")
  ldd "$bin" 2>/dev/null | awk '/=> \// {print $3}' | while read -r lib; do
    is_system_lib "$lib" && continue
    dest="$out_dir/lib/$(basename "$lib")"
    if [ ! -e "$dest" ]; then
      cp -L "$lib" "$dest"
      chmod u+w "$dest"
    fi
  done
  if [ $have_patchelf -eq 1 ]; then
    cp "$bin" "$out_dir/bin/$name"
    chmod u+w "$out_dir/bin/$name"
    patchelf --set-rpath '$ORIGIN/../lib' "$out_dir/bin/$name"
  else
    mkdir -p "$out_dir/libexec"
    cp "$bin" "$out_dir/libexec/$name"
    cat > "$out_dir/bin/$name" <<WRAP
#!/usr/bin/env bash
here=\$(cd "\$(dirname "\${BASH_SOURCE[0]}")" && pwd)
export LD_LIBRARY_PATH="\$here/../lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "\$here/../libexec/$name" "\$@"
WRAP
    chmod +x "$out_dir/bin/$name"
  fi
done
if [ $have_patchelf -eq 1 ]; then
  for lib in "$out_dir"/lib/*.so*; do
    [ -f "$lib" ] && patchelf --set-rpath '$ORIGIN' "$lib" 2>/dev/null || true
  done
fi
echo "bundle.sh: $(ls "$out_dir/bin" | wc -l) binaries, $(ls "$out_dir/lib" | wc -l) libraries in $out_dir" >&2
if [ $tar_out -eq 1 ]; then
  out_abs=$(cd "$out_dir" && pwd)
  archive="$out_abs.tar.gz"
  tar -czf "$archive" -C "$(dirname "$out_abs")" "$(basename "$out_abs")"
  echo "bundle.sh: wrote $archive ($(du -h "$archive" | cut -f1))" >&2
fi

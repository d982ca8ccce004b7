#!/usr/bin/env bash
# Refresh vc2/eval/assets/vendor/ from the npm registry, using the pinned list in npm-packages.txt.
# Each library lands as vendor/<package>/<major>/<file name> with its licence beside it, and
# vendor/MANIFEST.tsv records package, exact version, file and sha256. Needs node/npm; the packages are
# fetched with `npm pack` (tarballs, no install scripts run) into a throwaway directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="$here/../vc2/eval/assets/vendor"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dest"
manifest="$tmp/MANIFEST.tsv"
printf 'package\tversion\tfile\tsha256\n' > "$manifest"
grep -v '^\s*#' "$here/npm-packages.txt" | grep -v '^\s*$' | while read -r spec file lic; do
  name="${spec%@*}"; version="${spec##*@}"; major="${version%%.*}"
  out="$dest/$name/$major"
  echo "vendor: $name@$version -> ${out#$here/../}/$(basename "$file")"
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null 2>&1)
  tgz="$(ls "$tmp"/*.tgz)"
  mkdir -p "$tmp/x" "$out" && tar -xzf "$tgz" -C "$tmp/x"
  cp "$tmp/x/package/$file" "$out/$(basename "$file")"
  if [ -f "$tmp/x/package/$lic" ]; then cp "$tmp/x/package/$lic" "$out/LICENSE"
  else  # e.g. vega@5.33.1 ships no licence file: reuse the newer major's (same project, same licence)
    newer="$(ls "$dest/$name"/*/LICENSE | head -1)"
    { cat "$newer"; echo; echo "(copied from $name's newer major: the $spec npm package ships no licence file)"; } > "$out/LICENSE"
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$version" "$name/$major/$(basename "$file")" \
    "$(sha256sum "$out/$(basename "$file")" | cut -d' ' -f1)" >> "$manifest"
  rm -rf "$tmp/x" "$tgz"
done
cp "$manifest" "$dest/MANIFEST.tsv"
du -sh "$dest"

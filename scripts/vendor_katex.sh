#!/usr/bin/env bash
# Vendor KaTeX for the review page (service/static/vendor/katex/): the pinned npm tarball, checked against its
# pinned sha512 (npm's "integrity") and sha256 before anything is extracted. Only the minified JS, CSS,
# auto-render and the woff2 fonts are kept (every browser the page supports loads woff2 first; the CSS's
# woff/ttf fallbacks are never requested). Re-run after changing KATEX_VERSION and both checksums.
set -euo pipefail
KATEX_VERSION=0.19.1
KATEX_SHA512=jG8uKntjSEcm2EpQOh0XturpPuuC9r3Sq5HLHdsFdWZT27E672SF19QEi+of0/YeOy15lDgRhKvr5614uRrEfA==
KATEX_SHA256=24da5a599eb2fcede2e270b99a6ff48bca816beecc95feeb84e8cccbd1bb34fd

cd "$(dirname "$0")/.."
dest=service/static/vendor/katex
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "katex@${KATEX_VERSION}" >/dev/null)
tarball="$work/katex-${KATEX_VERSION}.tgz"
got512=$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)
got256=$(sha256sum "$tarball" | cut -d' ' -f1)
if [[ "$got512" != "$KATEX_SHA512" || "$got256" != "$KATEX_SHA256" ]]; then
  echo "katex-${KATEX_VERSION}.tgz checksum mismatch: sha512 $got512, sha256 $got256" >&2
  exit 1
fi

tar -xzf "$tarball" -C "$work"
rm -rf "$dest"
mkdir -p "$dest/contrib" "$dest/fonts"
cp "$work/package/dist/katex.min.js" "$work/package/dist/katex.min.css" "$work/package/LICENSE" "$dest/"
cp "$work/package/dist/contrib/auto-render.min.js" "$dest/contrib/"
cp "$work/package/dist/fonts/"*.woff2 "$dest/fonts/"
printf 'katex %s sha512-%s sha256 %s\n' "$KATEX_VERSION" "$KATEX_SHA512" "$KATEX_SHA256" >"$dest/VERSION"
echo "vendored katex ${KATEX_VERSION} into $dest ($(du -sh "$dest" | cut -f1))"

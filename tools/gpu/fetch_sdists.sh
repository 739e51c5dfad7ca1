#!/usr/bin/env bash
# Download the sdists that tools/gpu/verify_kernels.sh builds into .gpu/ (kept out of git: add `/.gpu/` to
# .git/info/exclude), checking their sha256. `pip download` cannot fetch them: building their metadata needs
# torch. Run on a machine with network access; then carry .gpu to the GPU machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mkdir -p .gpu
while read -r name version file sha; do
    if [[ ! -f .gpu/$file ]]; then
        url=$(curl -sSf "https://pypi.org/pypi/$name/json" | python3 -c "
import json, sys
print(next(f['url'] for f in json.load(sys.stdin)['releases']['$version'] if f['filename'] == '$file'))")
        curl -sSfL -o ".gpu/$file" "$url"
    fi
    echo "$sha  .gpu/$file" | sha256sum -c -
done <<'EOF'
causal-conv1d 1.7.0 causal_conv1d-1.7.0.tar.gz 3202758494eaa7b597ce1c282dfa188889506bfcb92cad3c407d26736bfcd32b
mamba-ssm 2.3.2.post1 mamba_ssm-2.3.2.post1.tar.gz 104cc47e9101e5401a675fa2b784f2952b9b037f3b1dd83b5ac544394e95d028
EOF

#!/usr/bin/env bash
# Validates the Kubernetes manifests of deploy/ offline, strictly (unknown
# fields are errors), against the oldest and the newest Kubernetes the control
# plane supports (k8s-openapi's range: 1.33 to 1.37), with kubernetes-validate
# from PyPI, installed here in a virtual environment under the cache:
#   ${LIGHTPOOL_CACHE:-<repo>/.cache}/kubernetes-validate/
# It also checks that the validator refuses a manifest with an unknown field,
# so a validator that passes everything cannot pass here.
#
#   ./tests/validate-manifests.sh          (tests/run.sh runs it)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
KV_VERSION=1.37.0
OLDEST=1.33.0
NEWEST=1.37.0
CACHE=${LIGHTPOOL_CACHE:-$PWD/.cache}/kubernetes-validate
VENV=$CACHE/venv-$KV_VERSION
KV=$VENV/bin/kubernetes-validate

if [[ ! -x $KV ]]; then
    # python3 -m venv needs Debian's python3-venv (not part of a minimal python3).
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        echo "validate-manifests: installing python3-venv (apt)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv >/dev/null; }
    fi
    echo "validate-manifests: installing kubernetes-validate $KV_VERSION into $VENV"
    rm -rf "$VENV"
    mkdir -p "$CACHE"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi

files=(deploy/crds/*.yaml deploy/controlplane/*.yaml deploy/dataplane/*.yaml deploy/csi/*.yaml deploy/dpu/target-dpu.yaml)
for v in "$OLDEST" "$NEWEST"; do
    echo "validate-manifests: Kubernetes $v, strict: ${files[*]}"
    "$KV" --strict --quiet -k "$v" "${files[@]}"
done

# The kustomization names every manifest there is (and only those).
listed=$(grep -E '^  - [a-z]' deploy/kustomization.yaml | grep -v newTag | sed 's/^  - //' | grep yaml | sort)
present=$(cd deploy && ls crds/*.yaml controlplane/*.yaml dataplane/*.yaml csi/*.yaml | sort)
if [[ "$listed" != "$present" ]]; then
    echo "validate-manifests: deploy/kustomization.yaml does not list exactly the manifests in deploy/:" >&2
    diff <(echo "$listed") <(echo "$present") >&2 || true
    exit 1
fi

bad=$(mktemp --suffix=.yaml)
trap 'rm -f "$bad"' EXIT
sed 's/^  replicas: 2$/  replicas: 2\n  replicaz: 2/' deploy/controlplane/controller.yaml >"$bad"
grep -q replicaz "$bad"
if "$KV" --strict --quiet -k "$NEWEST" "$bad" >/dev/null 2>&1; then
    echo "validate-manifests: an unknown field passed strict validation" >&2
    exit 1
fi
echo "validate-manifests: ok (and an unknown field is refused)"

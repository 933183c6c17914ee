#!/usr/bin/env bash
# Wheels that careamics 0.3.5 needs beyond what the lent GPU machine has (Python 3.12, torch 2.11,
# torchvision 0.26, lightning, torchmetrics, scikit-image, ...): it has no package registry, so
# they travel with the working tree (carry .whl), and benchmarks/gpu_check.sh installs them into
# /tmp/site and runs careamics on the same GPU as ours. The list is what `from careamics import
# CAREamist` and the worker's other imports load (python -X importtime in a careamics venv), minus
# the machine's own packages; versions are those the CPU comparison ran with.
#     bash benchmarks/careamics_wheels.sh        # then run gpu_check.sh with carry [".whl"]
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=()
for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
    careamics==0.3.5 microssim==0.0.5 bioimageio.core==0.11.0 bioimageio.spec==0.5.12.0 pydantic==2.13.4 \
    pydantic-core==2.46.4 pydantic-settings==2.14.1 annotated-types==0.7.0 typing-inspection==0.4.2 \
    email-validator==2.4.0 dnspython==2.9.2 python-dotenv==1.2.2 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 \
    google-crc32c==1.9.0 imagecodecs==2026.3.6 loguru==0.7.3 ruyaml==0.91.0 genericache==0.5.2 platformdirs==4.14.9 \
    ipython==8.12.3 jedi==0.20.0 parso==0.8.7 traitlets==5.15.0 decorator==5.2.1 pickleshare==0.7.5 backcall==0.2.0 \
    prompt_toolkit==3.0.52 wcwidth==0.7.0 pexpect==4.8.0 ptyprocess==0.7.0 stack-data==0.6.3 asttokens==3.0.1 \
    executing==2.2.1 pure_eval==0.2.3 exceptiongroup==1.3.2
du -sh .whl

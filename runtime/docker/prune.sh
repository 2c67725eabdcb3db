#!/bin/sh
# Remove from the runtime venv what a model server never uses, to keep the image small
# (targets.md #8: runtime image <= 1.5 GB). smoke.py proves TensorFlow still loads and runs a
# SavedModel afterwards; the build fails if it does not.
set -eu
venv=${1:?usage: prune.sh VENV}
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
before=$(du -sm "$venv" | cut -f1)

# C++ headers, only needed to compile custom ops against TensorFlow (~290 MB).
rm -rf "$site/tensorflow/include"
# Test suites shipped inside packages (TensorFlow kernel tests, numpy, h5py, ...). Only directories
# named tests/kernel_tests: `tensorflow/_api/v2/test` is the tf.test API and is imported by TF.
find "$site" -depth -type d \( -name tests -o -name kernel_tests \) -exec rm -rf {} +
# Static libraries, only needed to link C extensions against numpy.
find "$site" -name '*.a' -type f -delete
# Type stubs and Cython sources: nothing at run time reads them.
find "$site" -type f \( -name '*.pyi' -o -name '*.pyx' -o -name '*.pxd' \) -delete

after=$(du -sm "$venv" | cut -f1)
echo "prune.sh: $venv ${before} MB -> ${after} MB"

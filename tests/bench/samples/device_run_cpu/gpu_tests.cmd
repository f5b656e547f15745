python -m pytest -m gpu tests/gpu -q -rs -p no:cacheprovider --junitxml=WORK/gpu_tests.xml

# SPDX-License-Identifier: Apache-2.0
"""The runtime core: the composition root (``core``: config → stores, stages, handler), the
pipeline every record goes through (``pipeline``) and the process set-up of zero-code runs
(``bootstrap``: providers, the Prometheus endpoint, SIGTERM and fork handling).

Nothing is imported here: the instrumentation imports the pipeline, the composition root imports
the instrumentation, and each is reached by its own module path."""

# SPDX-License-Identifier: Apache-2.0
"""Provider adapters, the shared call lifecycle and the shared stream proxy."""

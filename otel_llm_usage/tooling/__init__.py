# SPDX-License-Identifier: Apache-2.0
"""What the CLI computes and generates, never loaded by an instrumented process: reports and
insights over a ledger, alert rules and Grafana dashboards, the local monitoring stack, the demo."""

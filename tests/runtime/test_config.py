# SPDX-License-Identifier: Apache-2.0
"""Invalid configuration names the file, the line and the key."""

from __future__ import annotations

import textwrap

import pytest

from otel_llm_usage.config import ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "otel-llm-usage.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_full_example_from_design_loads(tmp_path):
    path = write(tmp_path, """\
        capture_content: false
        stream_include_usage: true
        attribution: {metric_labels: [provider, model, function, user, session, anchor], max_label_values: 1000}
        pricing:
          currency: CNY
          exchange_rates: {USD: 7.1}
          models:
            - {provider: openai, model: my-ft-model, currency: USD, input: 3.0, output: 12.0}
        budgets:
          - name: qwen-daily-per-user
            match: {provider: dashscope, model: "qwen-*"}
            per: user
            window: day
            timezone: Asia/Shanghai
            limit: {cost: 50, tokens: 600000}
            warn_at: [0.8, 0.9]
            action: downgrade
            downgrade_to: qwen-turbo
        ledger: sqlite:///tmp/x.db
        """)
    cfg = load_config(path, env={})
    assert cfg.budgets[0].per == "user"
    assert cfg.ledger == "sqlite:///tmp/x.db"
    assert cfg.source == str(path)


@pytest.mark.parametrize(("body", "line", "key", "fragment"), [
    ("capture_content: maybe\n", 1, "capture_content", "boolean"),
    ("attribution:\n  max_label_values: 0\n", 2, "attribution.max_label_values", "greater than or equal"),
    ("attribution:\n  metric_labels: [provider, colour]\n", 2, "attribution.metric_labels", "colour"),
    ("stream_include_usage: true\nnot_a_key: 1\n", 2, "not_a_key", "Extra inputs"),
    ("budgets:\n  - name: b1\n    limit: {cost: 5}\n    window: fortnight\n", 4, "budgets[0].window", "rolling"),
    ("budgets:\n  - name: b1\n    limit: {}\n", 3, "budgets[0].limit", "cost, tokens"),
    ("budgets:\n  - name: b1\n    limit: {cost: 1}\n    action: downgrade\n", 2, "budgets[0]", "downgrade_to"),
    ("budgets:\n  - name: b1\n    limit: {cost: 1}\n    timezone: Mars/Base\n", 4, "budgets[0].timezone",
     "time zone"),
    ("ledger: postgres://x\n", 1, "ledger", "sqlite"),
])
def test_invalid_values_name_file_line_and_key(tmp_path, body, line, key, fragment):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert f"{path}:{line}: {key}:" in message
    assert fragment in message


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "capture_content: false\nattribution: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: invalid YAML"):
        load_config(path, env={})


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", env={})


def test_env_overrides_and_their_errors(tmp_path):
    path = write(tmp_path, "capture_content: false\n")
    cfg = load_config(path, env={"OTEL_LLM_USAGE_CAPTURE_CONTENT": "true",
                                 "OTEL_LLM_USAGE_METRIC_LABELS": "provider,model",
                                 "OTEL_LLM_USAGE_LEDGER": "memory://"})
    assert cfg.capture_content is True
    assert cfg.attribution.metric_labels == ("provider", "model")
    with pytest.raises(ConfigError, match="environment variable OTEL_LLM_USAGE_MAX_LABEL_VALUES"):
        load_config(path, env={"OTEL_LLM_USAGE_MAX_LABEL_VALUES": "lots"})


def test_config_path_from_env(tmp_path):
    path = write(tmp_path, "stream_include_usage: false\n")
    assert load_config(env={"OTEL_LLM_USAGE_CONFIG": str(path)}).stream_include_usage is False


@pytest.mark.parametrize(("body", "key", "fragment"), [
    ("ledger: sqlite://relative/x.db\n", "ledger", "absolute path"),
    ("ledger: sqlite:///no/such/folder/x.db\n", "ledger", "/no/such/folder does not exist"),
    ("ledger: redis://host:notaport/0\n", "ledger", "port must be a number"),
    ("ledger: redis://host:6379/²\n", "ledger", "database must be a number"),
    ("attribution:\n  hash_users: true\n", "attribution", "needs hash_key"),
])
def test_ledger_urls_and_unkeyed_hashing_are_refused_with_file_line(tmp_path, body, key, fragment):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert f"{path}:1: {key}:" in str(info.value) and fragment in str(info.value)


def test_duplicate_keys_are_refused(tmp_path):
    path = write(tmp_path, "budgets:\n  - {name: a, limit: {tokens: 5}}\nattribution:\n  hash_users: false\n"
                           "  hash_users: true\nbudgets: []\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert f"{path}:5: attribution.hash_users: duplicate key (first given on line 4)" in message
    assert f"{path}:6: budgets: duplicate key (first given on line 1)" in message

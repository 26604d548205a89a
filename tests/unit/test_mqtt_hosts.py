"""A broker URL naming several nodes (gridhub/mqtt.py): one URL per host with the same credentials, scheme and
query, in order; empty hosts refused. The connection's failover across nodes runs on a real NATS cluster in
tests/test_ingest_nats.py."""

from __future__ import annotations

import pytest

from gridhub.mqtt import MqttConnection, broker_addresses, single_host_urls
from gridhub.protocol import BrokerURLError


def test_each_host_keeps_the_credentials_scheme_and_query() -> None:
    url = "mqtts://hub:p%40ss@n1.example:8883, n2.example:8884,10.0.0.3:8885?cafile=/etc/ca.crt"
    assert single_host_urls(url) == ["mqtts://hub:p%40ss@n1.example:8883?cafile=/etc/ca.crt",
                                     "mqtts://hub:p%40ss@n2.example:8884?cafile=/etc/ca.crt",
                                     "mqtts://hub:p%40ss@10.0.0.3:8885?cafile=/etc/ca.crt"]
    first, *_, last = broker_addresses(url)
    assert (first.host, first.port, first.username, first.password, first.tls) == ("n1.example", 8883, "hub",
                                                                                  "p@ss", True)
    assert (last.host, last.port) == ("10.0.0.3", 8885)


def test_one_host_is_unchanged() -> None:
    assert single_host_urls("mqtt://u:p@127.0.0.1:1883") == ["mqtt://u:p@127.0.0.1:1883"]
    conn = MqttConnection("mqtt://u:p@127.0.0.1:1883", "c1")
    assert len(conn.addresses) == 1 and conn.where == "127.0.0.1:1883"


@pytest.mark.parametrize("url", ["mqtt://u:p@h1:1,,h3:3", "mqtt://u:p@h1:1,", "mqtt://u:p@" + ",".join(["h:1"] * 17)])
def test_empty_hosts_and_too_many_are_refused(url: str) -> None:
    with pytest.raises(BrokerURLError):
        single_host_urls(url)


def test_a_broker_address_of_a_multi_host_url_is_its_first_node_and_an_error_shows_no_password() -> None:
    from gridhub.protocol import BrokerAddress, BrokerURLError

    first = BrokerAddress.parse("mqtt://hub:p%40ss@10.0.0.1:1883,10.0.0.2:1884,10.0.0.3:1885")
    assert (first.host, first.port, first.username, first.password) == ("10.0.0.1", 1883, "hub", "p@ss")
    try:
        BrokerAddress.parse("http://hub:very-secret@10.0.0.1:1883")
    except BrokerURLError as exc:
        assert "very-secret" not in str(exc)
    else:
        raise AssertionError("an http:// broker URL was accepted")

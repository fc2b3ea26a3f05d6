"""The test harness: real peers and the real agent process, for tests/ and bench/.

Real peers, no mocks: a private mosquitto (`broker`), asyncua servers (`opcua_servers`, `plant`),
a node-opcua server (`node_opcua_peer`, with its Node project in `node_opcua/`), MES peers
(`mes_files`, `mes_http`, `mes_sql`, `postgres`), network faults (`tcp_proxy`, `mqtt_proxy`,
`blackhole`), a short disk (`short_disk`), an sd_notify peer, test certificates (`tls`), a
hub-side requester (`commands`) and consumer (`events`), and the `edge-agent` process itself
(`agent_process`).

Dependency rule: testkit may import the whole application (agent, buffer, config, connectors,
events) but not tests; nothing of the application imports testkit or tests
(tests/unit/test_architecture.py enforces both).
It is not distributed (pyproject's packages.find leaves it out): it is imported from the
repository root, where the tests and benchmarks run.
"""

"""MQTT equipment adapter (aiomqtt): topic filters + JSON payloads -> SPC points and tool state.

Files: `config.py` (MqttBrokerConfig, TopicMapping, MqttTls), `client.py`
(aiomqtt client from config, TopicRouter), `session.py` (MqttSession:
supervisor, mapping, retained tool state), `errors.py` (rooted in FabdError).

    session = MqttSession(broker_config, sink, current_lot=core.current_lot,
                          lot_at=core.lot_at)
    tg.create_task(session.run(), name=f"mqtt[{broker_config.broker_id}]")
    await session.publish_tool_state("ETCH01", {"e10": "productive", "lot": "L1"})

A broker in the daemon's TOML:

    [[equipment.mqtt]]
    broker_id = "facility"
    host = "10.1.30.5"
    port = 8883
    client_id = "fabd-fab1"            # stable: the broker keeps our QoS 1 backlog
    username = "fabd"
    password_env = "FABD_MQTT_PW"
    state_topic = "fab/state/{tool_id}"  # retained, for dashboards
    [equipment.mqtt.tls]
    ca_file = "/etc/fabd/pki/mqtt-ca.pem"
    [[equipment.mqtt.subscriptions]]
    topic = "fab/sensors/{tool_id}/data"
    values = { "temp" = "chamber_temp_c", "flow.ar" = "argon_flow_sccm" }
    lot_field = "lot"
    ts_field = "ts"
    state_field = "state"
    state_values = { "RUN" = "productive", "IDLE" = "standby", "DOWN" = "unscheduled_down" }
    [[equipment.mqtt.subscriptions]]
    topic = "fab/{tool_id}/pv/{parameter}"   # bare number or {"value": x}

Without a lot_field a sample gets the lot processing on the tool; with a ts_field,
a sample older than the connection (the broker's backlog after an outage) gets the
lot that processed at its time (core.lot_at), "" if the tool was idle then.
"""

"""MQTT equipment adapter (aiomqtt): topic filters + JSON payloads -> SPC points and tool state.

    session = MqttSession(broker_config, sink)
    tg.create_task(session.run(), name=f"mqtt[{broker_config.broker_id}]")
    await session.publish_tool_state("ETCH01", {"e10": "productive", "lot": "L1"})
"""

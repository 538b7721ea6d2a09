"""OPC UA equipment adapter (asyncua client): node profiles -> domain events, methods <- commands.

    session = OpcUaSession(tool_config, sink)
    tg.create_task(session.run(), name=f"opcua[{tool_config.tool_id}]")
    result = await session.command(RemoteCommand.START, {"LOTID": "L1", "PPID": "ETCH-A"})
"""

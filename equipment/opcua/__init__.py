"""OPC UA equipment adapter (asyncua client): node profiles -> domain events, methods <- commands.

Files: `config.py` (OpcUaToolConfig, OpcUaSecurity, node and method blocks),
`client.py` (one asyncua connection with the profile's security), `session.py`
(OpcUaSession: supervisor, data changes -> events/points, ToolControl),
`errors.py` (OpcUaError tree rooted in daemon.errors.FabdError).

    session = OpcUaSession(tool_config, sink)            # constructor does nothing
    tg.create_task(session.run(), name=f"opcua[{tool_config.tool_id}]")
    result = await session.command(RemoteCommand.START, {"LOTID": "L1", "PPID": "ETCH-A"})

A profile in the daemon's TOML:

    [[equipment.opcua]]
    tool_id = "CVD02"
    endpoint_url = "opc.tcp://10.1.21.12:4840"
    e10_state_node = "ns=2;s=CVD02.State"
    e10_state_values = { "1" = "productive", "2" = "standby", "5" = "unscheduled_down" }
    control_state_node = "ns=2;s=CVD02.ControlState"
    lot_id_node = "ns=2;s=CVD02.LotId"           # non-empty = that lot is in process
    recipe_node = "ns=2;s=CVD02.Recipe"
    alarms = [ { node_id = "ns=2;s=CVD02.Alarms.DoorOpen", alid = 1001, text = "door open" },
               { node_id = "ns=2;s=CVD02.AlarmCode", kind = "code" } ]
    parameters = [ { node_id = "ns=2;s=CVD02.rf_power_w", parameter = "rf_power_w" } ]
    [equipment.opcua.security]
    policy = "Basic256Sha256"
    mode = "SignAndEncrypt"
    client_cert_file = "/etc/fabd/pki/fabd.der"
    client_key_file = "/etc/fabd/pki/fabd.key.pem"
    trusted_certs_dir = "/etc/fabd/pki/trusted"   # or server_cert_file = "..." (pinning)
    username = "fab"
    password_file = "/etc/fabd/secrets/cvd02.pw"  # or password_env = "FABD_CVD02_PW"
    [equipment.opcua.commands.START]
    object_node = "ns=2;s=CVD02"
    method_node = "ns=2;s=CVD02.Start"
    args = ["LOTID", "PPID"]
"""

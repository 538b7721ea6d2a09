"""Everything that talks to tools: SECS/GEM (HSMS), OPC UA and MQTT adapters and simulators.

All adapters turn what they hear into one vocabulary of domain events
(`equipment.events`) and hand them to an `EventSink`; the daemon core is the
only writer of lot and tool state.
"""

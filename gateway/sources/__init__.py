"""Sources: the only modules that touch the MQTT and Modbus libraries, behind one interface."""

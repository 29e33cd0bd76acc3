"""The broker: the embedded one, its password file, the Mosquitto configuration, the ACL."""

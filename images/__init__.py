"""The Somnus guest image builder: Debian packages + wheels + guest agent -> bootable qcow2."""

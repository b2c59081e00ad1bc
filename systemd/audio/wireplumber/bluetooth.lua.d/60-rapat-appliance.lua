-- No Bluetooth audio on the appliance (bluetooth.service is masked in the image).
bluez_monitor.enabled = false

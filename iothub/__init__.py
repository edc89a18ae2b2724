"""IoT Hub: a real-time telemetry server for device fleets and their dashboards."""

__version__ = "0.1.0"

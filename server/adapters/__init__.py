"""Protocol adapters: each WebSocket protocol (native, OpenAI Realtime, Twilio Media Streams)
turned into the same call (server/session.py); `connection.py` is what they all share."""

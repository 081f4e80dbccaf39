#!/usr/bin/env node
/** `sensor-agent`: the on-device provisioning agent and its tools. */
import { agentMain } from './main.js';

await agentMain();

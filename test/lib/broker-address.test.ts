/**
 * lib/broker-address: broker URLs parsed with WHATWG URL into what MQTT.js connects to, so
 * MQTT.js never calls the deprecated url.parse() (DEP0169 on Node >= 24, printed at every
 * start of the bundled agent). The emulated board's journal check runs it on Node 26.
 */
import { expect } from 'chai';
import { parse } from 'node:url';
import { brokerAddress } from '../../lib/broker-address.js';

describe('lib/broker-address', () => {
  it('gives the protocol, host and port MQTT.js took from url.parse()', () => {
    for (const url of ['mqtts://broker.example.net:8883', 'mqtt://127.0.0.1:1883', 'mqtts://Broker.Example.NET', 'mqtt://[::1]:1884', 'mqtts://[fe80::1]']) {
      const legacy = parse(url);
      const want = { protocol: String(legacy.protocol).replace(/:$/, ''), host: legacy.hostname, ...(legacy.port ? { port: Number(legacy.port) } : {}) };
      expect(brokerAddress(url), url).to.deep.equal(want);
    }
  });

  it('refuses what is not an mqtt:// or mqtts:// URL with a host', () => {
    for (const [url, why] of [
      ['broker.example.net:8883', /must be mqtt:\/\/ or mqtts:\/\//],
      ['ws://broker:9001', /must be mqtt:\/\/ or mqtts:\/\//],
      ['not a url', /is not a URL/],
      ['mqtt://', /is not a URL|has no host/],
    ] as const) {
      expect(() => brokerAddress(url), url)
        .to.throw(why)
        .with.property('code', 'E_USAGE');
    }
  });
});

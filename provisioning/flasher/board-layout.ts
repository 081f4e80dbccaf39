/** Where everything lives on the board (docs/CONTRACTS.md, "On the board"). */
export const BOARD = {
  agentDir: '/opt/sensor-agent',
  configDir: '/etc/sensor-agent',
  config: '/etc/sensor-agent/config.json',
  trust: '/etc/sensor-agent/trust.jwks',
  trustRel: 'trust.jwks',
  ca: '/etc/sensor-agent/ca.pem',
  caRel: 'ca.pem',
  clientCert: '/etc/sensor-agent/client.crt',
  clientCertRel: 'client.crt',
  clientKey: '/etc/sensor-agent/client.key',
  clientKeyRel: 'client.key',
  hooksDir: '/etc/sensor-agent/hooks',
  /** Left by flash when the agent's user could not be created yet; removed by the first-boot hand-over. */
  firstbootPending: '/etc/sensor-agent/firstboot.pending',
  stateRoot: '/var/lib/sensor-agent',
  keystore: '/var/lib/sensor-agent/keys',
  stateDir: '/var/lib/sensor-agent/state',
  enrollToken: '/var/lib/sensor-agent/enroll.token',
  unitDir: '/etc/systemd/system',
  agentUnit: '/etc/systemd/system/sensor-agent.service',
  firstbootUnit: '/etc/systemd/system/sensor-agent-firstboot.service',
  wantsDir: '/etc/systemd/system/multi-user.target.wants',
  enableLink: '/etc/systemd/system/multi-user.target.wants/sensor-agent.service',
  sysusersDir: '/etc/sysusers.d',
  sysusers: '/etc/sysusers.d/sensor-agent.conf',
  libexecDir: '/usr/local/lib/sensor-agent',
  firstbootScript: '/usr/local/lib/sensor-agent/firstboot',
  cliWrapper: '/usr/local/bin/sensor-agent',
  /** The image's own Node.js (what `--node system` trees run on). */
  node: '/usr/bin/node',
  /** What the unit runs: the tree's Node, or a link to BOARD.node for `--node system` trees. */
  agentNode: '/opt/sensor-agent/node/bin/node',
  agentBundle: '/opt/sensor-agent/sensor-agent.mjs',
  /** Where the image's Debian packages (and so its nodejs version) are listed. */
  dpkgStatus: '/var/lib/dpkg/status',
} as const;

/** The agent's user as systemd/sysusers.d/sensor-agent.conf creates it. */
export const AGENT_USER = 'sensor-agent';

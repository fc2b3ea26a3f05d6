// A node-opcua server for the OPC UA connector tests (testkit/node_opcua_peer.py starts it).
//
//   node server.js PORT PKI_DIR CERT_FILE KEY_FILE APPLICATION_URI
//
// Listens on 127.0.0.1:PORT with security None and Basic256Sha256 Sign / SignAndEncrypt,
// anonymous users allowed. Its certificate manager keeps its trust list in PKI_DIR and does NOT
// accept unknown client certificates: a new client certificate lands in PKI_DIR/rejected/ and
// is refused until someone moves it to PKI_DIR/trusted/certs/ (the manager watches the folders).
//
// Address space (namespace index 1, "urn:plant-edge-agent:node-opcua-line"):
//   Objects/Line1               object, event notifier of Server
//   Objects/Line1/Temperature   Double  ns=1;s=Line1.Temperature   (starts at 20)
//   Objects/Line1/Temperature/TemperatureHigh   ExclusiveLimitAlarm on Temperature (high 80)
//
// Commands, one per line on stdin; each is answered with one JSON line on stdout:
//   set VALUE   the temperature (the alarm evaluates it)       -> {"ok": "set"}
//   ack         acknowledge the alarm's current state          -> {"ok": "ack"}
//   trust FILE  trust a rejected client certificate (PEM)      -> {"ok": "trust"}
// The first stdout line is {"ready": ENDPOINT_URL} once the server listens. Errors are one
// {"error": TEXT} line. The process ends when stdin closes.
"use strict";

const readline = require("node:readline");
const {
    OPCUAServer,
    OPCUACertificateManager,
    MessageSecurityMode,
    SecurityPolicy,
    DataType,
    Variant,
} = require("node-opcua");

const NAMESPACE = "urn:plant-edge-agent:node-opcua-line";

function say(message) {
    process.stdout.write(JSON.stringify(message) + "\n");
}

function buildAddressSpace(server) {
    const addressSpace = server.engine.addressSpace;
    addressSpace.installAlarmsAndConditionsService();
    const namespace = addressSpace.registerNamespace(NAMESPACE);
    const line = namespace.addObject({
        browseName: "Line1",
        nodeId: "s=Line1",
        organizedBy: addressSpace.rootFolder.objects,
        eventNotifier: 1,
        notifierOf: addressSpace.rootFolder.objects.server,
    });
    const temperature = namespace.addVariable({
        browseName: "Temperature",
        nodeId: "s=Line1.Temperature",
        componentOf: line,
        dataType: "Double",
        eventSourceOf: line,
        value: new Variant({ dataType: DataType.Double, value: 20.0 }),
    });
    const alarm = namespace.instantiateExclusiveLimitAlarm("ExclusiveLimitAlarmType", {
        browseName: "TemperatureHigh",
        conditionName: "TemperatureHigh",
        componentOf: line,
        conditionSource: temperature,
        inputNode: temperature,
        highLimit: 80.0,
    });
    alarm.setEnabledState(true);
    return { temperature, alarm };
}

function handle(command, nodes) {
    const [verb, argument] = command.trim().split(/\s+/);
    if (verb === "set") {
        const value = Number(argument);
        if (!Number.isFinite(value)) {
            throw new Error(`set needs a number, not ${JSON.stringify(argument)}`);
        }
        nodes.temperature.setValueFromSource({ dataType: DataType.Double, value });
        return "set";
    }
    if (verb === "ack") {
        const branch = nodes.alarm.currentBranch();
        nodes.alarm.acknowledgeAndAutoConfirmBranch(branch, "acknowledged by the test");
        return "ack";
    }
    throw new Error(`unknown command ${JSON.stringify(verb)}`);
}

// `trust FILE`: what a server's certificate screen does with a rejected client certificate
// (a PEM file in PKI_DIR/rejected/): the manager moves it to trusted/ and its in-memory index
// learns it at once, without waiting for its folder watcher to notice a moved file.
async function trust(certificateManager, file) {
    const pem = require("node:fs").readFileSync(file, "utf8");
    const base64 = pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
    await certificateManager.trustCertificate(Buffer.from(base64, "base64"));
    return "trust";
}

async function main() {
    const [port, pkiDir, certificateFile, privateKeyFile, applicationUri] = process.argv.slice(2);
    const certificateManager = new OPCUACertificateManager({
        rootFolder: pkiDir,
        automaticallyAcceptUnknownCertificate: false,
    });
    await certificateManager.initialize();
    const server = new OPCUAServer({
        port: Number(port),
        host: "127.0.0.1",
        hostname: "127.0.0.1",
        certificateFile,
        privateKeyFile,
        serverCertificateManager: certificateManager,
        serverInfo: { applicationUri, productUri: "urn:plant-edge-agent:node-opcua-test" },
        securityPolicies: [SecurityPolicy.None, SecurityPolicy.Basic256Sha256],
        securityModes: [
            MessageSecurityMode.None,
            MessageSecurityMode.Sign,
            MessageSecurityMode.SignAndEncrypt,
        ],
        allowAnonymous: true,
    });
    await server.initialize();
    const nodes = buildAddressSpace(server);
    await server.start();
    say({ ready: server.getEndpointUrl() });

    const input = readline.createInterface({ input: process.stdin });
    input.on("line", async (command) => {
        try {
            const [verb, argument] = command.trim().split(/\s+/);
            if (verb === "trust") {
                say({ ok: await trust(certificateManager, argument) });
            } else {
                say({ ok: handle(command, nodes) });
            }
        } catch (error) {
            say({ error: String(error && error.message ? error.message : error) });
        }
    });
    input.on("close", async () => {
        await server.shutdown(0);
        await certificateManager.dispose();
        process.exit(0);
    });
}

main().catch((error) => {
    say({ error: String(error && error.stack ? error.stack : error) });
    process.exit(1);
});

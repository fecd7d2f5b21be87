<#
.SYNOPSIS
  Install the InfiniService guest agent on a Windows VM (seed 002).

.DESCRIPTION
  Run as Administrator:

    .\install-windows.ps1 -ServiceMode normal -VmId <VM_ID>
    .\install-windows.ps1 -ServiceMode debug  -VmId <VM_ID>   # same, with log_level = "debug"

  - the binary: infiniservice.exe next to this script (scripts/build-windows makes it: the
    size-optimised build, the only one accepted), or -BinaryPath; installed to
    C:\Program Files\Infinibay\InfiniService\infiniservice.exe (copied, then renamed, so a
    failed copy never leaves half a binary);
  - C:\ProgramData\Infinibay\InfiniService\config.toml: written with the VM id; an existing
    file is kept (the operator's policy stays) and only its vm_id line is updated;
  - the Windows service: installed by the binary itself (infiniservice.exe --install-service:
    automatic start as LocalSystem, restart on failure, Event Log source), then started;
  - every step is logged to C:\Windows\Temp\infiniservice_install.log; if the service does
    not stay running, infiniservice.exe --diagnose is run into that log.

  The MSI (infiniservice.msi) does the same without a VM id; the id is informational only.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)]
    [ValidateSet('normal', 'debug')]
    [string] $ServiceMode,

    [Parameter(Mandatory = $true)]
    [string] $VmId,

    [string] $BinaryPath = (Join-Path $PSScriptRoot 'infiniservice.exe'),

    [string] $InstallDir = (Join-Path $env:ProgramFiles 'Infinibay\InfiniService')
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$LogFile = 'C:\Windows\Temp\infiniservice_install.log'
$ServiceName = 'infiniservice'
$ConfigDir = Join-Path $env:ProgramData 'Infinibay\InfiniService'
$ConfigPath = Join-Path $ConfigDir 'config.toml'
$Utf8NoBom = New-Object System.Text.UTF8Encoding $false

function Write-Log([string] $Message) {
    $line = '{0} {1}' -f (Get-Date).ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ssZ'), $Message
    Add-Content -Path $LogFile -Value $line -Encoding UTF8
    Write-Host "install-windows: $Message"
}

function Fail([string] $Message) {
    Write-Log "ERROR: $Message"
    exit 1
}

try {
    $principal = New-Object Security.Principal.WindowsPrincipal(
        [Security.Principal.WindowsIdentity]::GetCurrent())
    if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
        Write-Host 'install-windows: run this script as Administrator' -ForegroundColor Red
        exit 1
    }
    # The id goes into a TOML string: only what VM ids are made of (UUIDs, names).
    if ($VmId -notmatch '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$') {
        Fail "invalid VM id '$VmId' (letters, digits, '.', '_', '-')"
    }
    $logLevel = if ($ServiceMode -eq 'debug') { 'debug' } else { 'info' }

    Write-Log "installing InfiniService (mode $ServiceMode, VM $VmId)"
    if (-not (Test-Path -LiteralPath $BinaryPath -PathType Leaf)) {
        Fail "agent binary not found at $BinaryPath (use -BinaryPath)"
    }
    # Only the size-optimised build ships (scripts/build-windows: profile agent, opt-level s).
    $build = (& $BinaryPath --version 2>&1 | Out-String).Trim()
    if ($build -notmatch '\(opt-level s\)') {
        Fail "$BinaryPath is not the size-optimised agent build ($build): build it with scripts/build-windows"
    }
    Write-Log "build: $build"

    # The port can be opened by one process only: stop a running agent first.
    $existing = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
    if ($null -ne $existing -and $existing.Status -ne 'Stopped') {
        Write-Log 'stopping the running agent'
        Stop-Service -Name $ServiceName -Force
        $existing.WaitForStatus('Stopped', [TimeSpan]::FromSeconds(30))
    }

    New-Item -ItemType Directory -Force -Path $InstallDir | Out-Null
    $exe = Join-Path $InstallDir 'infiniservice.exe'
    Copy-Item -LiteralPath $BinaryPath -Destination "$exe.new" -Force
    Move-Item -LiteralPath "$exe.new" -Destination $exe -Force
    Write-Log ("binary installed to {0} ({1} bytes)" -f $exe, (Get-Item -LiteralPath $exe).Length)

    New-Item -ItemType Directory -Force -Path $ConfigDir | Out-Null
    if (Test-Path -LiteralPath $ConfigPath -PathType Leaf) {
        $text = [System.IO.File]::ReadAllText($ConfigPath)
        if ($text -match '(?m)^vm_id\s*=') {
            $text = [regex]::Replace($text, '(?m)^vm_id\s*=.*$', "vm_id = `"$VmId`"")
        } else {
            # Top-level keys must come before the first [table].
            $text = "vm_id = `"$VmId`"`r`n" + $text
        }
        [System.IO.File]::WriteAllText($ConfigPath, $text, $Utf8NoBom)
        Write-Log "kept the existing $ConfigPath, vm_id set to $VmId"
    } else {
        $config = @"
# InfiniService configuration (docs/agent.md, docs/windows.md). Written by install-windows.ps1.
vm_id = "$VmId"
collection_interval = 30
log_level = "$logLevel"
service_name = "$ServiceName"
virtio_serial_path = ""  # empty: \\.\Global\org.infinibay.agent, else COM port detection

[policy]
# Raw commands (PowerShell, cmd, argv) from the host. Off unless you need them.
allow_unsafe = false
# Empty: every safe action is allowed.
allowed_safe_actions = []
denied_safe_actions = []

[limits]
max_concurrent_commands = 4
max_output_bytes = 1048576
default_timeout_secs = 60
process_top_n = 50
inventory_interval = 300
"@
        [System.IO.File]::WriteAllText($ConfigPath, $config.Replace("`n", "`r`n"), $Utf8NoBom)
        Write-Log "wrote $ConfigPath"
    }

    # The binary installs (or reconfigures) the service, sets restart-on-failure and the
    # Event Log source, and starts it.
    $output = & $exe --install-service 2>&1
    $output | ForEach-Object { Write-Log "  $_" }
    if ($LASTEXITCODE -ne 0) {
        Fail "infiniservice.exe --install-service failed (exit $LASTEXITCODE)"
    }

    Start-Sleep -Seconds 2
    $service = Get-Service -Name $ServiceName
    if ($service.Status -eq 'Running') {
        Write-Log 'infiniservice is running'
    } else {
        Write-Log "infiniservice is $($service.Status); diagnosis follows"
        & $exe --diagnose 2>&1 | ForEach-Object { Write-Log "  $_" }
        Fail "see the Event Log (source $ServiceName), $ConfigDir\logs and $LogFile"
    }
    Write-Log 'done'
} catch {
    Fail $_.Exception.Message
}

// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

/// Pays many payees in one transaction.
///
/// A payer names each batch with an id of its choosing; an id pays once per payer, so a payer
/// that does not know whether a batch went through (it crashed, the node timed out) sends the
/// same batch again and either it pays or it reverts with `AlreadyPaid`: never twice.
///
/// Each transfer forwards only the 2300 gas stipend. A payee that refuses it (a contract
/// without a payable fallback, or one that runs out of gas) does not stop the batch: its amount
/// is kept here for it to `withdraw`.
///
/// Escrow: a depositor may hold an amount here for one payee on behalf of `from`; the payee
/// may take from it at any time what `from` owes it (`claim`), so it can serve `from` beyond
/// the credit it gives strangers. The depositor takes back what is left only after announcing
/// it and waiting `RELEASE_DELAY`, time for the payee to see the announcement and claim.
contract BatchPay {
    /// How long a depositor waits between announcing a release and taking the escrow back.
    uint256 public constant RELEASE_DELAY = 1 days;

    struct Escrow {
        uint256 amount;
        /// When the depositor may take it back; 0 while no release is announced.
        uint256 releaseAt;
    }

    /// payer => batch id => whether it was paid.
    mapping(address => mapping(bytes32 => bool)) public paid;
    /// Amounts payees refused at transfer time, theirs to withdraw.
    mapping(address => uint256) public unclaimed;
    /// from => payee => depositor => what is held.
    mapping(bytes32 => mapping(address => mapping(address => Escrow))) public escrows;
    /// Claims made, numbering each claim's payment.
    uint256 public claims;

    /// One transfer of a batch. `from` is the payer's own name for itself (golem: the
    /// requestor's node id), so a payee can tell whose debt the amount settles.
    event Payment(address indexed payee, bytes32 indexed from, bytes32 batch, uint256 amount);
    /// An escrow changed (a deposit, a release announced or done, a claim): what it holds now
    /// and when it may be released (0: not announced).
    event EscrowChanged(
        address indexed payee, bytes32 indexed from, address depositor, uint256 amount, uint256 releaseAt
    );

    error AlreadyPaid(bytes32 batch);
    error LengthMismatch(uint256 payees, uint256 amounts);
    error WrongValue(uint256 sent, uint256 total);
    error NothingToWithdraw();
    error WithdrawFailed();
    error NoReleaseAnnounced();
    error TooEarly(uint256 releaseAt);
    error NotHeld(uint256 held, uint256 asked);

    /// Pays `amounts[i]` wei to `payees[i]` for every i; the value sent must be their sum.
    function pay(bytes32 batch, bytes32 from, address[] calldata payees, uint256[] calldata amounts)
        external
        payable
    {
        if (payees.length != amounts.length) revert LengthMismatch(payees.length, amounts.length);
        if (paid[msg.sender][batch]) revert AlreadyPaid(batch);
        paid[msg.sender][batch] = true;
        uint256 total = 0;
        for (uint256 i = 0; i < payees.length; ++i) {
            address payee = payees[i];
            uint256 amount = amounts[i];
            total += amount;
            // With `gas: 0` the payee gets the 2300 stipend of a value transfer and no more.
            (bool ok,) = payee.call{value: amount, gas: 0}("");
            if (!ok) {
                unclaimed[payee] += amount;
            }
            emit Payment(payee, from, batch, amount);
        }
        if (total != msg.value) revert WrongValue(msg.value, total);
    }

    /// Holds the value sent for `payee` on behalf of `from`, adding to what the caller holds
    /// there; a release announced earlier is called off.
    function deposit(bytes32 from, address payee) external payable {
        Escrow storage escrow = escrows[from][payee][msg.sender];
        escrow.amount += msg.value;
        escrow.releaseAt = 0;
        emit EscrowChanged(payee, from, msg.sender, escrow.amount, 0);
    }

    /// Starts the wait before the caller may take back what it holds for `payee`.
    function announceRelease(bytes32 from, address payee) external {
        Escrow storage escrow = escrows[from][payee][msg.sender];
        escrow.releaseAt = block.timestamp + RELEASE_DELAY;
        emit EscrowChanged(payee, from, msg.sender, escrow.amount, escrow.releaseAt);
    }

    /// Sends the caller what is left of its escrow, once the announced wait is over.
    function release(bytes32 from, address payee) external {
        Escrow storage escrow = escrows[from][payee][msg.sender];
        if (escrow.releaseAt == 0) revert NoReleaseAnnounced();
        if (block.timestamp < escrow.releaseAt) revert TooEarly(escrow.releaseAt);
        uint256 amount = escrow.amount;
        escrow.amount = 0;
        escrow.releaseAt = 0;
        emit EscrowChanged(payee, from, msg.sender, 0, 0);
        (bool ok,) = payable(msg.sender).call{value: amount}("");
        if (!ok) revert WithdrawFailed();
    }

    /// The caller, a payee, takes `amount` of what `depositor` holds for it on behalf of
    /// `from`: a payment from `from`, announced as `pay` announces one.
    function claim(bytes32 from, address depositor, uint256 amount) external {
        Escrow storage escrow = escrows[from][msg.sender][depositor];
        if (amount > escrow.amount) revert NotHeld(escrow.amount, amount);
        escrow.amount -= amount;
        claims += 1;
        emit EscrowChanged(msg.sender, from, depositor, escrow.amount, escrow.releaseAt);
        emit Payment(msg.sender, from, keccak256(abi.encode("claim", claims)), amount);
        (bool ok,) = payable(msg.sender).call{value: amount}("");
        if (!ok) revert WithdrawFailed();
    }

    /// Sends the caller what it refused earlier.
    function withdraw() external {
        uint256 amount = unclaimed[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        unclaimed[msg.sender] = 0;
        (bool ok,) = payable(msg.sender).call{value: amount}("");
        if (!ok) revert WithdrawFailed();
    }
}
